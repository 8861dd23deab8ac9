"""Capstan trainer: the training-task service and the node agent that runs instances."""
