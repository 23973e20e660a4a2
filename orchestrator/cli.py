"""What every ``python -m orchestrator.X`` command shares: user errors are one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

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


def run_tune(tracker: Any, fit: Callable[[], Any], report: Callable[[Any], None], expected_trials: int,
             resume_command: str) -> int:
    """Fit a Tuner under the tracker's parent run, report, close the run and pick the exit status.

    An interrupt leaves trials unfinished or never created (grids and searchers expand lazily), so finished trials are
    counted against ``expected_trials`` rather than the length of the result grid. The parent run ends FINISHED,
    FAILED (a trial errored) or KILLED (interrupted; the resume command is printed), never RUNNING.
    """
    status = "FAILED"
    try:
        results = fit()
        interrupted = results.num_terminated + results.num_errors < max(len(results), expected_trials)
        status = "KILLED" if interrupted else ("FAILED" if results.num_errors else "FINISHED")
        report(results)
    except KeyboardInterrupt:
        status = "KILLED"
    finally:
        tracker.end_parent(status)
    if status == "KILLED":
        print(f"interrupted; continue with: {resume_command}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status == "FINISHED" else 1
