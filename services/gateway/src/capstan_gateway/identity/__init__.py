"""Accounts, API keys, sessions, custom policies and the audit records of the gateway (SPEC §1)."""
