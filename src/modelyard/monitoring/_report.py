"""The HTML drift report: one self-contained page (no scripts, no external resources; plots are PNG files
embedded as base64 data URLs), every value from the data HTML-escaped, and a Content-Security-Policy that
forbids scripts anyway. matplotlib is imported here only, and only its object-oriented API (no pyplot, so
no global figure state and no GUI backend)."""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.errors import UsageError, ValidationError

if TYPE_CHECKING:
    from modelyard.monitoring._drift import ColumnDrift, DriftReport

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_REF, _CUR = "#4C72B0", "#DD8452"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 0.9em; }
th { background: #f3f3f3; }
.drift { color: #b00020; font-weight: bold; }
.ok { color: #1b7f3b; }
section { margin: 2em 0; border-top: 1px solid #ddd; }
img { max-width: 100%; }
.note { color: #555; font-style: italic; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _mpl_text(text: str) -> str:
    """Labels for matplotlib: '$' would start mathtext (and a malformed formula raises)."""
    return text.replace("\\", "\\\\").replace("$", r"\$")


def _png(draw: Any, *, width: float = 7.0, height: float = 3.0) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    ax = fig.subplots()
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram(plot: dict[str, Any], title: str) -> str:
    edges = plot["edges"]
    widths = [b - a for a, b in itertools.pairwise(edges)]

    def draw(ax: Any) -> None:
        ax.bar(
            edges[:-1],
            plot["reference"],
            width=widths,
            align="edge",
            alpha=0.5,
            color=_REF,
            label="reference",
        )
        ax.bar(
            edges[:-1], plot["current"], width=widths, align="edge", alpha=0.5, color=_CUR, label="current"
        )
        ax.set_ylabel("share")
        ax.set_title(_mpl_text(title), fontsize=10)
        ax.legend(fontsize=8)

    return _png(draw)


def _bars(plot: dict[str, Any], title: str) -> str:
    labels: Sequence[str] = [_mpl_text(str(x)) for x in plot["labels"]]
    xs = range(len(labels))

    def draw(ax: Any) -> None:
        ax.bar([x - 0.2 for x in xs], plot["reference"], width=0.4, color=_REF, label="reference")
        ax.bar([x + 0.2 for x in xs], plot["current"], width=0.4, color=_CUR, label="current")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("share")
        ax.set_title(_mpl_text(title), fontsize=10)
        ax.legend(fontsize=8)

    return _png(draw, height=3.6)


def _plots(col: ColumnDrift) -> list[str]:
    plot = dict(col.plot)
    kind = plot.get("type")
    if kind == "histogram":
        return [_histogram(plot, col.name)]
    if kind == "bars":
        return [_bars(plot, col.name)]
    if kind == "text":
        out = []
        if plot.get("chars"):
            out.append(_histogram(plot["chars"], f"{col.name}: characters per text"))
        if plot.get("tokens"):
            out.append(_bars(plot["tokens"], f"{col.name}: most frequent reference tokens"))
        return out
    return []


def _fmt(value: Any) -> str:
    from modelyard.monitoring._drift import _fmt as fmt

    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return fmt(float(value)) if isinstance(value, float) else f"{value:,}"


def _stats_table(col: ColumnDrift) -> str:
    rows = [
        ("test", col.test_name),
        ("score", _fmt(col.statistic)),
        ("threshold", _fmt(col.threshold)),
        ("values compared (reference / current)", f"{col.reference_count:,} / {col.current_count:,}"),
        (
            "missing (reference -> current)",
            f"{col.reference_missing:,} ({col.reference_missing_share:.1%}) -> "
            f"{col.current_missing:,} ({col.current_missing_share:.1%})",
        ),
        *(
            [
                (
                    "infinite (reference -> current)",
                    f"{col.reference_infinite:,} ({col.reference_infinite_share:.1%}) -> "
                    f"{col.current_infinite:,} ({col.current_infinite_share:.1%})",
                )
            ]
            if col.reference_infinite or col.current_infinite
            else []
        ),
        *((key, _fmt(value)) for key, value in col.stats.items()),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _parts_table(col: ColumnDrift) -> str:
    if not col.parts:
        return ""
    head = "<tr><th>part</th><th>test</th><th>p-value</th><th>threshold</th><th>drift</th></tr>"
    body = "".join(
        f"<tr><td>{_e(p.name)}</td><td>{_e(p.test_name)}</td><td>{_e(_fmt(p.statistic))}</td>"
        f"<td>{_e(_fmt(p.threshold))}</td>{_verdict(p.drifted)}</tr>"
        for p in col.parts
    )
    return f"<table>{head}{body}</table>"


def _verdict(drifted: bool, judged: bool = True) -> str:
    if not judged:  # no reference value to compare with
        return "<td>not judged</td>"
    return '<td class="drift">DRIFT</td>' if drifted else '<td class="ok">ok</td>'


def render_html(report: DriftReport, *, title: str = "Drift report") -> str:
    from modelyard.monitoring._drift import DriftReport as Report

    summary = (
        f"{len(report.drifted_columns)} of {len(report.columns)} columns drifted "
        f"({report.share_drifted:.0%}; the dataset drifts at {report.drift_share:.0%} or more): "
        f"{'DATASET DRIFT' if report.dataset_drifted else 'no dataset drift'}. "
        f"Reference {report.reference_rows:,} rows, current {report.current_rows:,} rows; "
        f"computed in {report.seconds:.2f} s."
    )
    head = "".join(f"<th>{_e(h)}</th>" for h in Report.ROW_HEADER)
    rows = []
    for i, (col, cells) in enumerate(zip(report.columns, report.rows(), strict=True)):
        tds = [f"<td>{_e(c)}</td>" for c in cells]
        tds[0] = f'<td><a href="#col-{i}">{_e(cells[0])}</a></td>'
        tds[5] = _verdict(col.drifted, col.judged)
        rows.append(f"<tr>{''.join(tds)}</tr>")
    sections = []
    for i, col in enumerate(report.columns):
        images = "".join(
            f'<img alt="{_e(col.name)}" src="data:image/png;base64,{png}">' for png in _plots(col)
        )
        notes = "".join(f'<p class="note">{_e(n)}</p>' for n in col.notes)
        verdict = '<span class="drift">DRIFT</span>' if col.drifted else '<span class="ok">ok</span>'
        if not col.judged:
            verdict = "not judged"
        sections.append(
            f'<section id="col-{i}"><h2>{_e(col.name)} ({_e(col.kind)}): {verdict}</h2>'
            f"{notes}{images}{_parts_table(col)}{_stats_table(col)}</section>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1><p>{_e(summary)}</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
        f"{''.join(sections)}</body></html>\n"
    )


def write_html(report: DriftReport, path: Path, *, title: str = "Drift report") -> Path:
    """Render and write atomically (temp file in the same directory, fsync, rename). The file is created
    0600, like every file modelyard writes that may hold data values (category names, tokens)."""
    if path.is_dir():
        raise ValidationError(f"{path} is a directory; give the path of the HTML file to write")
    if not path.parent.is_dir():
        raise ValidationError(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("the HTML drift report needs matplotlib: pip install 'modelyard[monitor]'") from None
    from modelyard.core._paths import write_file

    write_file(path, render_html(report, title=title))
    return path
