"""Pure training-task domain: no I/O imports here."""
