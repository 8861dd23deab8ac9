"""API schemas, separate from the protobuf contracts; each module converts to and from its protos."""

from __future__ import annotations

from .common import Page
from .nodes import Node, NodeList
from .resource_groups import ResourceGroup, ResourceGroupCreate, ResourceGroupList, ResourceGroupUpdate
from .training_tasks import LogLine, LogPage, TrainingTask, TrainingTaskCreate, TrainingTaskList

__all__ = [
    "LogLine",
    "LogPage",
    "Node",
    "NodeList",
    "Page",
    "ResourceGroup",
    "ResourceGroupCreate",
    "ResourceGroupList",
    "ResourceGroupUpdate",
    "TrainingTask",
    "TrainingTaskCreate",
    "TrainingTaskList",
]
