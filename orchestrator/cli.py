"""What every ``python -m orchestrator.X`` command shares: user errors are one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from trainables import registry

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Anything the person at the keyboard can fix: the message says what and how, on one line."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The orchestrator's own user errors, ConfigError, and what every trainable loaded so far declared as one
    (``register(..., user_errors=...)``: a missing dataset, an unreadable checkpoint)."""
    from orchestrator.cluster import RecordError
    from orchestrator.tracking import TrackingError

    return (UserError, TrackingError, RecordError, *registry.user_error_types())


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a user error prints ``error: ...`` and returns 2 instead of a traceback."""
    try:
        return main(argv)
    except user_error_types() as err:  # evaluated after the error: the trainable that raised it is loaded
        message = " ".join(str(err).split())  # one line, whatever the exception's text
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
