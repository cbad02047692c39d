"""The errors consentflow raises on purpose.

Each carries a message written for the person at the terminal or the API client: one line that says
what is wrong and how to fix it. The CLI turns them into exit codes, the web app into 4xx statuses.
"""

from __future__ import annotations


class ConsentflowError(Exception):
    """Base class: an expected failure with a message fit to show as is."""

    exit_code = 1


class InvalidInput(ConsentflowError):
    """The request itself is malformed or names something that does not exist (exit 2, HTTP 4xx)."""

    exit_code = 2


class NotFound(InvalidInput):
    """A subject, purpose or system that the request names does not exist."""


class TransitionNotAllowed(ConsentflowError):
    """The lifecycle rules refuse this change from the current state (exit 1, HTTP 409)."""


class Conflict(ConsentflowError):
    """The change would duplicate something that already exists (exit 1, HTTP 409)."""
