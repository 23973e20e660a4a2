"""What a comparison shows: the ranked groups in the terminal (rich), as CSV or Markdown (``orchestrator.tables``),
and one self-contained HTML page; and the files logged back to the parent runs."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.compare.images import TrialImage
from orchestrator.compare.ranking import Verdict
from orchestrator.compare.read import PARENT_TAG
from orchestrator.tables import fmt_number, markdown_table


def display_table(groups: pd.DataFrame) -> pd.DataFrame:
    """The ranked groups as printed and exported: the interval as one column."""
    out = groups.drop(columns=["ci_low", "ci_high"]).copy()
    out["ci95"] = [f"[{fmt_number(lo)}, {fmt_number(hi)}]" if np.isfinite(lo) else ""
                   for lo, hi in zip(groups["ci_low"], groups["ci_high"], strict=True)]
    return out


def print_groups(groups: pd.DataFrame, title: str, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = display_table(groups)
    table = Table()
    for column in shown.columns:
        table.add_column(str(column), justify="left" if shown[column].dtype == object else "right", no_wrap=True)
    for _, row in shown.head(top).iterrows():
        table.add_row(*(fmt_number(v) for v in row))
    print(title, flush=True)  # plain: a long title wraps in the terminal rather than squeezed into the table
    console = Console(width=max(100, Console().width))
    console.print(table)
    if len(shown) > top:
        console.print(f"({len(shown) - top} more group(s); --top N shows more, --csv writes all)")


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt_number(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def provenance_table(parents: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, parent in parents.iterrows():
        rows.append({
            "experiment": parent["experiment"],
            "sweep": parent.get("tags.mlflow.runName", ""),
            "run_id": parent["run_id"],
            "status": parent["status"],
            "started": str(parent["start_time"])[:19],
            "trials": int((trials[PARENT_TAG] == parent["run_id"]).sum()),
            "git commit": parent.get("tags.mlflow.source.git.commit", ""),
            "command": parent.get("tags.command", ""),
        })
    return pd.DataFrame(rows)


def write_html(path: Path, *, title: str, intro: Sequence[str], verdict: Verdict, groups: pd.DataFrame,
               plots: Sequence[Path], provenance: pd.DataFrame, extra_tables: dict[str, pd.DataFrame],
               trials: pd.DataFrame, images: Sequence[TrialImage] = ()) -> Path:
    """One HTML file with everything inline (images as data: URIs). Its Content-Security-Policy forbids every
    outside resource, so a page that renders at all renders offline."""
    figures = [_figure(plot, plot.stem, plot.stem.replace("_", " ")) for plot in plots]
    pictures = [_figure(image.path, image.path.stem, image.caption) for image in images]
    pictures_html = f"<h2>Images the trials wrote</h2>{''.join(pictures)}" if pictures else ""
    extra = "".join(f"<h2>{html.escape(name)}</h2>{_html_table(t)}" for name, t in extra_tables.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f0f0; }} tbody tr:first-child {{ background: #eef7ee; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
.verdict {{ padding: 0.8em; background: #f7f7e8; border-left: 4px solid #cc4; }}
code, .mono {{ font-family: ui-monospace, monospace; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{"".join(f"<p>{html.escape(line)}</p>" for line in intro)}
<p class="verdict">{html.escape(verdict.text)}</p>
<h2>Ranked groups</h2>{_html_table(display_table(groups))}
<h2>Plots</h2>{"".join(figures) or "<p>(no plots)</p>"}
{pictures_html}
{extra}
<h2>Sweeps (parent runs): commands and commits</h2>{_html_table(provenance)}
<details><summary>All {len(trials)} trial runs</summary>{_html_table(trials)}</details>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _figure(path: Path, alt: str, caption: str) -> str:
    """An image inline as a data: URI, with its caption."""
    kind = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/{kind};base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_markdown(path: Path, title: str, groups: pd.DataFrame, verdict: Verdict) -> Path:
    """The title, the ranked groups as a Markdown table, and the verdict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{title}\n\n{markdown_table(display_table(groups))}\n{verdict.text}\n")
    return path


def log_to_parents(client: Any, parent_ids: Sequence[str], files: Sequence[Path]) -> None:
    for run_id in parent_ids:
        for file in files:
            client.log_artifact(run_id, str(file), artifact_path="compare")
