"""Errors a user can cause.

Every exception derived from :class:`UserError` is reported by ``main.py`` (and the other
command-line entry points) as one line, ``error: <message>``, with a non-zero exit status and
no traceback. The message must say what was wrong and what would be valid.
"""
from __future__ import annotations


class UserError(Exception):
    """Base class of errors caused by the user's input (config, data, paths, names)."""


class ConfigError(UserError, ValueError):
    """A config value is out of range, of the wrong type, or not available."""


class DataError(UserError, ValueError):
    """A data file is missing, unreadable, or holds data that cannot be used."""


class UnknownNameError(UserError, ValueError):
    """A component name (loss, sampler, model, head, ...) is not registered."""
