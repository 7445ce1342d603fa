"""The harness's one exception tree.

    HarnessError                 anything the harness reports to a user
    ├── UsageError               bad input (arguments, files): exit status 2
    └── TargetError              the target could not be started or reached
"""

from __future__ import annotations

__all__ = ["HarnessError", "TargetError", "UsageError"]


class HarnessError(Exception):
    """Base of every error the harness reports with a message instead of a traceback."""

    exit_code = 1


class UsageError(HarnessError):
    """The user gave something the harness cannot use; the message says what to change."""

    exit_code = 2


class TargetError(HarnessError):
    """The target did not start, died, or could not be reached."""
