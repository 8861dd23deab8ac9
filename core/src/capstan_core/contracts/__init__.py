"""Cross-service event contracts: the facts one service publishes and others consume.

Each event has an explicit, stable name and version (never a Python path).
Service-private events live in the owning service; these are shared because
more than one service folds them.
"""
