"""The ``capstan`` command: start and stop the platform, manage resource groups, nodes and training tasks."""
