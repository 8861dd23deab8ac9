"""capstan_agentkit: what every node agent shares (the trainer's, the inference agent's).

Joining a resource group and heartbeats (``membership``), health checks (``healthcheck``), the
sandbox that runs user processes contained (``sandbox``), no-follow file operations on what user code
wrote (``safefs``), shipping instance logs (``shipper``), the settings every agent reads
(``settings``) and the wake-up subscription and runner watch of the agent loop (``loop``).
It knows nothing of training or serving.
"""
