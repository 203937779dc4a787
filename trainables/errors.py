"""The error a bad trial config value raises, below ``config`` and ``policy`` (both raise it).

Raised inside a trial, it travels back to the driver pickled by Ray: ``__reduce__`` rebuilds it from its own
arguments (an exception pickles its ``args``, here the one formatted message, which ``__init__`` cannot take).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad trial config value; ``key`` is the offending key (dotted for nested sections)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message

    def __reduce__(self):
        return type(self), (self.key, self.message)


def did_you_mean(name: object, choices) -> str:
    """``"; did you mean X?"`` for the closest of ``choices`` to a misspelt ``name`` (difflib), else ``""``."""
    import difflib

    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""
