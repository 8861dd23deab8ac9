"""Capstan core: the plumbing every service shares.

Imports flow one way: ``events`` and ``errors`` (pure) <- ``eventstore``,
``projection`` (persistence) <- ``service`` (runtime). Service domain modules
import only the pure layer.
"""
