"""What every ``python -m orchestrator.X`` command shares: user errors are one line on stderr and exit status 2;
SIGINT and SIGTERM to the driver are one interrupt (exit status 130 and 143)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

from trainables import registry

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
_received: list[int] = []  # the signals the driver was sent, in order (SIGTERM picks the exit status)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``error: ...`` line (argparse names the valid choices in it), not the
    whole usage block; ``--help`` still prints the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


def forward_sigterm() -> None:
    """Make SIGTERM (what Slurm, Kubernetes and ``timeout`` send) the same interrupt as SIGINT.

    Called at start and again once Ray is up: ``ray.init`` installs its own SIGTERM handler (``sys.exit``), which
    would skip Tune's last experiment checkpoint and leave the MLflow runs RUNNING. The handler calls whatever handles
    SIGINT at that moment: Tune's (stop the run, save its state; ``fit`` returns) or Python's (KeyboardInterrupt).
    """
    def interrupt(signum: int, frame: FrameType | None) -> None:
        _received.append(signum)
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:  # SIG_IGN or SIG_DFL from a parent: still stop
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def interrupted_status() -> int:
    """The exit status of an interrupted command: 143 (128 + SIGTERM) if it was sent SIGTERM, else 130."""
    return 128 + signal.SIGTERM if signal.SIGTERM in _received else EXIT_INTERRUPTED


class UserError(Exception):
    """Anything the person at the keyboard can fix: the message says what and how, on one line."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The orchestrator's own user errors, ConfigError, and what every trainable loaded so far declared as one
    (``register(..., user_errors=...)``: a missing dataset, an unreadable checkpoint)."""
    from orchestrator.cluster import ClusterError, RecordError, StorageError
    from orchestrator.tracking import TrackingError

    return (UserError, TrackingError, RecordError, ClusterError, StorageError, *registry.user_error_types())


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a user error prints ``error: ...`` and returns 2 instead of a traceback, and an interrupt
    that reaches here (before anything was recorded: the executor handles the rest) returns 130 or 143."""
    forward_sigterm()
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return interrupted_status()
    except user_error_types() as err:  # evaluated after the error: the trainable that raised it is loaded
        message = " ".join(str(err).split())  # one line, whatever the exception's text
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
