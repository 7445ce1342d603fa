"""The harness's one exception tree.

    HarnessError                 anything the harness reports to a user
    ├── UsageError               bad input (arguments, files): exit status 2
    └── TargetError              the target could not be started or reached
        └── EndpointError        the target answered an HTTP error (status and body kept)
"""

from __future__ import annotations

__all__ = ["EndpointError", "HarnessError", "TargetError", "UsageError"]


class HarnessError(Exception):
    """Base of every error the harness reports with a message instead of a traceback."""

    exit_code = 1


class UsageError(HarnessError):
    """The user gave something the harness cannot use; the message says what to change."""

    exit_code = 2


class TargetError(HarnessError):
    """The target did not start, died, or could not be reached."""


class EndpointError(TargetError):
    """The target answered with an HTTP error or an unreadable body; `status` (None when the
    status was fine but the body was not) and `detail` (a short excerpt of the body)."""

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
