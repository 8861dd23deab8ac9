"""The networks a task's instances may have (one definition; the training contract and the sandbox read it).

A module of its own, importing nothing: the instance runner starts once per instance and must not pay
for the event contracts (pydantic models) to learn three names.
"""

NETWORK_MODES: tuple[str, ...] = ("isolated", "none", "host")
