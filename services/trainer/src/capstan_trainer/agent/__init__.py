"""Trainer node agent: runs assigned training-task instances on this node."""
