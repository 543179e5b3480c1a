"""thresher's errors: one base class, so the CLI can turn any of them into a one-line message.

Every error a user can cause (a bad file, option, name or config) is a :class:`ThresherError`.
Subclasses keep the builtin they refine (``ValueError`` for bad values, ``KeyError`` for
unknown names) so callers that catch builtins keep working, but their message is plain
text (``str(KeyError("x"))`` would add quotes).
"""
from __future__ import annotations


class ThresherError(Exception):
    """Base of every error thresher raises on purpose; ``str(e)`` is the user-facing message."""

    def __str__(self) -> str:  # KeyError quotes its argument; user messages must not be quoted
        return str(self.args[0]) if self.args else ""


class ConfigError(ThresherError, ValueError):
    """A bad option, parameter, budget or config file."""


class DataFormatError(ThresherError, ValueError):
    """An input file (pool, task data) that cannot be read; names the file, line and field."""


class UnknownNameError(ThresherError, KeyError):
    """An unknown registry name (signal, selector, operator, task); lists the known ones."""


class MissingSignalError(ThresherError, KeyError):
    """A selector asked for a signal that is not in the store; names the command that computes it."""


class JudgeError(ThresherError, RuntimeError):
    """The judge endpoint is unreachable, refuses us, or fails too often."""


class StoreError(ThresherError, RuntimeError):
    """The signal store is inconsistent, locked by another run, or not writable."""
