"""The one base class of every error a user can cause, so the CLI can report them in one line."""

from __future__ import annotations


class DynqError(Exception):
    """A problem with the user's model, build, input, board or command line; the message says the fix."""


class UsageError(DynqError, ValueError):
    """A command-line argument or file is unusable."""


USER_ERRORS: tuple[type[BaseException], ...] = (DynqError, OSError)
