"""Capstan scheduler: resource groups, nodes, queues and placement."""
