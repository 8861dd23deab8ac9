"""Pure scheduling domain: no I/O imports here."""
