"""Shared helpers of the benchmarks: Ray start, robust statistics, environment notes, table printing.

Why these exist: the machine is a shared 2-core box, so every benchmark interleaves its variants (A, B, A, B, ...)
and reports medians and ratios instead of single absolute times; every table carries the load average seen around
the measurement, so a reader can tell a quiet run from a noisy one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load1() -> float:
    """One-minute load average: how busy the shared machine was (2.0 = both cores busy)."""
    return os.getloadavg()[0]


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


def fmt(value: Cell, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


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
            table.add_row(*(fmt(c) for c in row))
        console = Console(width=160)
        console.print(table)
        for note in self.notes:
            console.print(f"  {note}", highlight=False)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(self.columns) - 1)) + "|"]
        lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in self.rows]
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
