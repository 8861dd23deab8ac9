"""Capstan inference: online services (later issues) and the inference node agent."""
