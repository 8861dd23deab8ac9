"""Cross-service event contracts: the facts one service publishes and others consume.

Each event has an explicit, stable name and version (never a Python path).
Service-private events live in the owning service; these are shared because
more than one service folds them.
"""

# Importing any contract registers them all, and the service runtime imports them: what a reader sets
# aside (or skips as an unknown type) must not depend on which modules it happened to import first.
from . import identity, registry, scheduling, serving, training  # noqa: E402,F401
