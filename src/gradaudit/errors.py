"""Exceptions that carry a message fit for a user."""

from __future__ import annotations

from polars.exceptions import PanicException

#: What a per-input or per-run guard catches: any error, and a panic inside polars' Rust code
#: (``PanicException`` derives from ``BaseException``, so ``except Exception`` lets it through).
UNEXPECTED: tuple[type[BaseException], ...] = (Exception, PanicException)


class GradauditError(Exception):
    """Base class of gradaudit's own errors."""


class ReadError(GradauditError):
    """An input file could not be read at all; the message says why, for a user."""


class NotATrainingLog(GradauditError):
    """An input that by design holds no training curves (an hparams record next to the run it
    describes): it is left out of a scan, not reported as an error."""


class UsageError(GradauditError):
    """The caller asked for something that cannot be done (bad option, missing path)."""


MAX_MESSAGE = 1000  # characters: a message quoting a file's content stays readable and small


def clip_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters (a message may quote a header or cell of a file)."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text) - limit + 40} more characters)"
