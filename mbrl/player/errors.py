"""Errors of the player; each carries the HTTP status the web layer answers with."""
from __future__ import annotations


class PlayerError(ValueError):
    """A request the player cannot serve; the message says what is wrong and what to do."""

    status = 400


class NotFound(PlayerError):
    status = 404


class Conflict(PlayerError):
    """The request does not fit the session's state (e.g. a step before a start context)."""

    status = 409
