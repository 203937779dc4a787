"""The error a bad trial config value raises, below ``config`` and ``policy`` (both raise it)."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad trial config value; ``key`` is the offending key (dotted for nested sections)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message
