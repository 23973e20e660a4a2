"""What every ``python -m orchestrator.X`` command shares: user errors are one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from trainables.registry import ConfigError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Anything the person at the keyboard can fix: the message says what and how, on one line."""


def user_error_types() -> tuple[type[BaseException], ...]:
    from orchestrator.cluster import RecordError
    from orchestrator.tracking import TrackingError
    from trainables.data import DatasetError
    from trainables.loop import CheckpointError

    return (UserError, ConfigError, TrackingError, DatasetError, CheckpointError, RecordError)


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a user error prints ``error: ...`` and returns 2 instead of a traceback."""
    try:
        return main(argv)
    except user_error_types() as err:
        message = " ".join(str(err).split())  # one line, whatever the exception's text
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
