"""Capstan registry: models (versions, artifacts and lineage come in later issues)."""
