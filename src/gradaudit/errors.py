"""Exceptions that carry a message fit for a user."""

from __future__ import annotations


class GradauditError(Exception):
    """Base class of gradaudit's own errors."""


class ReadError(GradauditError):
    """An input file could not be read at all; the message says why, for a user."""


class UsageError(GradauditError):
    """The caller asked for something that cannot be done (bad option, missing path)."""
