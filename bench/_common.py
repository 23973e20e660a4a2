"""Shared helpers of the benchmarks: Ray start, robust statistics, environment notes, table printing (numbers and
Markdown through ``orchestrator.tables``, as everywhere else in the project), a local ``mlflow server`` to measure, an
MLflow client that counts its calls and a stand-in Tune trial (what a tracking callback reads of one).

Why these exist: the machine is a shared 2-core box, so every benchmark interleaves its variants (A, B, A, B, ...)
and reports medians and ratios instead of single absolute times; every table carries the load average seen around
the measurement, so a reader can tell a quiet run from a noisy one.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.tables import fmt_number, markdown_table

Cell = str | float | int | None


def add_common_args(parser: argparse.ArgumentParser, repeats: int) -> None:
    """``--repeats`` and ``--markdown`` for every benchmark (the same flags everywhere)."""
    parser.add_argument("--repeats", type=int, default=repeats, help=f"interleaved repeats (default {repeats})")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables as markdown to PATH")


def start_ray() -> float:
    """Start a private local Ray on 2 logical CPUs (never attach to someone else's); returns the seconds it took."""
    import ray

    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return time.perf_counter() - started


def interleaved(steps: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """``repeats`` rounds of every variant's timed step in turn (A, B, C, A, B, C, ...), so a change in the machine's
    load hits every variant alike; each variant's list of seconds."""
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(repeats):
        for label, step in steps.items():
            times[label].append(step())
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load1() -> float:
    """One-minute load average: how busy the shared machine was (2.0 = both cores busy)."""
    return os.getloadavg()[0]


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes, also ones that exited), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / _TICK


def _read_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, own user+system CPU seconds) of ``pid``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            raw = stat.read()
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2:].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK


class _OwnTree:
    """CPU seconds used by this process and its descendants (Ray's processes, trial actors) since ``start``.

    A dead child's time does not reliably reach its parent's cutime (the raylet does not account for the workers it
    reaps that way), so each process's own time is sampled every ``interval`` seconds from a thread: a process
    that ends loses at most its last interval. One sample reads only the listing of /proc plus the stat files of
    our own processes and of new ones (about a millisecond), so the sampling does not slow what is measured.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._foreign: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        table = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := _read_stat(int(entry))) is not None:
                table[int(entry)] = stat
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, _) in table.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        self._start = {pid: table[pid][1] for pid in tree if pid in table}
        self._last = dict(self._start)
        self._foreign = set(table) - tree
        self._thread.start()

    def _sample(self) -> None:
        for entry in sorted(int(e) for e in os.listdir("/proc") if e.isdigit()):  # parents before children
            if entry in self._foreign:
                continue
            stat = _read_stat(entry)
            if stat is None:
                continue
            if entry in self._last:
                self._last[entry] = max(self._last[entry], stat[1])
            elif stat[0] in self._last:
                self._last[entry] = stat[1]  # new descendant: all its time falls in the interval
            else:
                self._foreign.add(entry)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._last.items())


class ForeignLoad:
    """How many cores *other* people's processes kept busy during a measurement (0 = quiet, 2 = both cores taken).

    The machine is shared: this tells a clean measurement from one that competed with someone's test run. It is
    the machine's busy time minus our own process tree's, divided by the wall time (Linux /proc; NaN elsewhere).
    """

    def __init__(self) -> None:
        self.value = float("nan")
        self._own: _OwnTree | None = None

    def __enter__(self) -> ForeignLoad:
        try:
            self._own = _OwnTree()
            self._own.start()
            self._start = (time.perf_counter(), _machine_busy_seconds())
        except OSError:
            self._own = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._own is None:
            return
        try:
            own = self._own.stop()
            wall, busy = time.perf_counter(), _machine_busy_seconds()
        except OSError:
            return
        elapsed = wall - self._start[0]
        if elapsed > 0:
            self.value = max(0.0, ((busy - self._start[1]) - own) / elapsed)


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...`` then ``t[0]`` is the wall time in seconds (perf_counter)."""
    box: list[float] = []
    started = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - started)


def environment(threads: str) -> str:
    """One line on where the numbers come from: CPUs, torch threads, versions, date."""
    import mlflow
    import ray
    import torch

    return (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), torch threads {threads}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
            f"mlflow {mlflow.__version__}, {dt.date.today().isoformat()}; shared machine (load1 "
            f"{load1():.2f} at the end)")


@dataclass
class Table:
    """A titled table with notes below it, printed with rich and rendered as markdown."""

    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        self.rows.append(list(cells))

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table as RichTable

        table = RichTable(title=self.title, title_justify="left")
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in self.rows:
            table.add_row(*(fmt_number(c) for c in row))
        console = Console(width=200)
        console.print(table)
        for note in self.notes:
            console.print(f"  {note}", highlight=False)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", markdown_table(self.rows, self.columns).rstrip("\n")]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def emit(tables: Sequence[Table], markdown_path: str | None, header: str) -> None:
    """Print every table; with ``--markdown PATH`` write them (under ``header``) as markdown too."""
    for table in tables:
        table.print()
    if markdown_path:
        text = f"{header}\n\n" + "\n".join(t.markdown() for t in tables)
        Path(markdown_path).write_text(text)
        print(f"markdown written to {markdown_path}")


@contextmanager
def mlflow_server(root: str, timeout: float = 180.0) -> Iterator[tuple[str, float]]:
    """A local ``mlflow server`` (fresh sqlite store and proxied artifacts under ``root``) on a free port:
    ``with mlflow_server(root) as (uri, startup_seconds)``. It runs in a session of its own, so stopping it ends
    exactly its processes (the server and its uvicorn workers) and nothing else on the shared machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{os.path.join(root, 'server.db')}", "--artifacts-destination",
               os.path.join(root, "server_artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    uri = f"http://127.0.0.1:{port}"
    with open(os.path.join(root, "server.log"), "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"mlflow server exited with {process.returncode}; see {root}/server.log")
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"mlflow server did not answer /health within {timeout:.0f} s")
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:  # noqa: S310 (ours)
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            yield uri, time.perf_counter() - started
        finally:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):  # its own process group only
                try:
                    os.killpg(process.pid, sig)
                    process.wait(wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue


class Counting:
    """An MlflowClient that counts its calls by name (every call is one request to the store)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return call


@dataclass
class StandInTrial:
    """What MlflowTrialCallback reads of a Tune trial."""

    trial_id: str
    config: dict[str, Any]
    checkpoint: Any
    last_result: dict[str, Any]
    status: str = "TERMINATED"
    storage: Any = None  # Tune's StorageContext: the callback reads trial_fs_path (where the checkpoint lies)

    def __str__(self) -> str:
        return f"bench_noop_{self.trial_id}"
