"""Model cards (Markdown and HTML) from what the registry knows and has verified: intended use, data
versions, metrics overall and per slice, gate results, optimisation variants, lineage and signature.

Everything on the card comes from the signed manifest, the evaluation report it names and the signed
attestations; the card is built only after the version verifies, so it never describes bytes that are
not the ones stored. The HTML is rendered from the same sections, every value escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from modelyard._markdown import md_paragraph, md_text
from modelyard.core._models import ModelVersion, RegisteredModel
from modelyard.core._platform import Context, Platform
from modelyard.registry._aliases import attestations, history
from modelyard.registry._versions import eval_report, read_manifest, resolve_row, verify

Table = tuple[list[str], list[list[str]]]


@dataclass
class Card:
    title: str
    sections: list[tuple[str, list[str | Table]]]  # heading, paragraphs and tables

    def markdown(self) -> str:
        out = [f"# {md_text(self.title)}", ""]
        for heading, parts in self.sections:
            out += [f"## {md_text(heading)}", ""]
            for part in parts:
                if isinstance(part, Code):
                    out += [f"`{part}`", ""]
                elif isinstance(part, str):
                    out += [md_paragraph(part), ""]
                else:
                    cols, rows = part
                    out.append("| " + " | ".join(md_text(c) for c in cols) + " |")
                    out.append("|" + "---|" * len(cols))
                    out += ["| " + " | ".join(md_text(v) for v in r) + " |" for r in rows]
                    out.append("")
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for heading, parts in self.sections:
            body.append(f"<h2>{e(heading)}</h2>")
            for part in parts:
                if isinstance(part, Code):
                    body.append(f"<p><code>{e(part)}</code></p>")
                elif isinstance(part, str):
                    body.append(f"<p>{e(part)}</p>")
                else:
                    cols, rows = part
                    head = "".join(f"<th>{e(str(c))}</th>" for c in cols)
                    trs = "".join(
                        "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in r) + "</tr>" for r in rows
                    )
                    body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        style = (
            "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
            "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
            "text-align:left}th{background:#f3f3f3}"
        )
        return (
            f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(self.title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )


class Code(str):
    """A paragraph that is a command (ours, never user text): a code span on the card."""


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(platform: Platform, ctx: Context, spec: str) -> Card:
    """The card of a version (verified first: IntegrityError if it does not match its signature)."""
    report_v = verify(platform, ctx, spec)
    # By number from here: an alias that moved since must not get a card of a version nobody verified.
    info, manifest = read_manifest(platform, ctx, report_v.spec)
    report = eval_report(platform, ctx, info.spec)
    gates = attestations(platform, ctx, info.spec, kind="gates")
    lineage = manifest.get("lineage") or {}
    with platform.db.read() as s:
        _, row = resolve_row(platform, s, ctx, info.spec)
        children = [
            (f"{s.get(RegisteredModel, c.model_id).name}@{c.version}", c.variant, c.bytes)  # type: ignore[union-attr]
            for c in s.scalars(select(ModelVersion).where(ModelVersion.parent_id == row.id))
        ]
    variants = [
        [
            child,
            variant,
            f"{size / 1e6:.1f} MB",
            ", ".join(
                f"{k} {_fmt(v)}"
                for k, v in sorted((read_manifest(platform, ctx, child)[1].get("benchmark") or {}).items())
            ),
        ]
        for child, variant, size in children
    ]
    events = [e for e in history(platform, ctx, info.name) if e.version == info.version]
    sections: list[tuple[str, list[str | Table]]] = []
    sections.append(
        (
            "Intended use",
            [
                info.description
                or manifest.get("description")
                or "No description was registered with this version.",
                f"Format: {info.format} ({info.variant}); {info.files} files, {info.bytes / 1e6:.1f} MB. "
                + "Aliases: "
                + (
                    ", ".join(
                        a + (" (unverified: refused)" if a in info.unverified else "") for a in info.aliases
                    )
                    or "none"
                )
                + ".",
            ],
        )
    )
    data_rows = [[d] for d in lineage.get("datasets") or []]
    sections.append(("Training data", [(["dataset version"], data_rows)] if data_rows else ["Not recorded."]))
    metric_parts: list[str | Table] = []
    if report is not None:
        overall = report.get("overall") or {}
        base = (report.get("baseline") or {}).get("overall") or {}
        metric_parts.append(
            (
                ["metric", "model", "copy baseline"],
                [[k, _fmt(v), _fmt(base.get(k, ""))] for k, v in sorted(overall.items())],
            )
        )
        slices = report.get("slices") or {}
        if slices:
            names = sorted({m for s in slices.values() for m in (s.get("metrics") or {})})
            metric_parts.append(
                (
                    ["slice", "n", *names],
                    [
                        [g, str(s.get("n", "")), *[_fmt((s.get("metrics") or {}).get(m, "")) for m in names]]
                        for g, s in sorted(slices.items())
                    ],
                )
            )
        info_line = report.get("info") or {}
        metric_parts.append(
            f"Evaluated on {info_line.get('split', 'the held-out split')} ({report.get('n')} examples)."
        )
    elif info.metrics:
        metric_parts.append((["metric", "value"], [[k, _fmt(v)] for k, v in sorted(info.metrics.items())]))
    else:
        metric_parts.append("No evaluation report was registered with this version.")
    sections.append(("Metrics", metric_parts))
    bad = [g for g in gates if not g["verified"]]
    if bad:  # verified above, edited since: no verdict, as `yard models show` gives none
        sections.append(
            (
                "Quality gates",
                [f"Attestation {g['id']} failed its signature check: {g['problem']}" for g in bad],
            )
        )
    elif gates:
        last = gates[-1]
        checks = (last.get("result") or {}).get("checks") or []
        sections.append(
            (
                "Quality gates",
                [
                    f"Latest gate run: {'PASSED' if last.get('passed') else 'FAILED'} on "
                    f"{last.get('created_at', '')[:19]} by {last.get('created_by')} "
                    f"(attestation {last['id']}, signed).",
                    (
                        ["check", "value", "bound", "result"],
                        [
                            [
                                c["name"],
                                _fmt(c["value"]) if c["value"] is not None else "-",
                                f"{c['op']} {_fmt(c['bound'])}" if c["bound"] is not None else "-",
                                ("pass" if c["passed"] else "FAIL")
                                + (f" ({c['note']})" if c.get("note") else ""),
                            ]
                            for c in checks
                        ],
                    ),
                ],
            )
        )
    else:
        sections.append(("Quality gates", ["No gates have been run on this version."]))
    bench = manifest.get("benchmark") or {}
    opt_parts: list[str | Table] = []
    if bench:
        opt_parts.append((["measure", "value"], [[k, _fmt(v)] for k, v in sorted(bench.items())]))
    if variants:
        opt_parts.append((["derived version", "variant", "size", "benchmark"], variants))
    sections.append(("Optimisation", opt_parts or ["No optimised variants."]))
    code = lineage.get("code") or {}
    sections.append(
        (
            "Lineage",
            [
                (
                    ["item", "value"],
                    [
                        ["run", lineage.get("run") or "-"],
                        ["experiment", lineage.get("experiment") or "-"],
                        ["recipe (sha256)", lineage.get("recipe") or "-"],
                        [
                            "code commit",
                            (code.get("commit", "-") + (" (dirty)" if code.get("dirty") else ""))
                            if code
                            else "-",
                        ],
                        ["parent version", lineage.get("parent") or "-"],
                    ],
                )
            ],
        )
    )
    if events:
        sections.append(
            (
                "Alias history",
                [
                    (
                        ["when", "alias", "action", "by", "reason"],
                        [
                            [e.at.isoformat(timespec="seconds"), e.alias, e.action, e.by, e.reason]
                            for e in events
                        ],
                    )
                ],
            )
        )
    sections.append(
        (
            "Signature",
            [
                f"Manifest sha256 {info.manifest_digest}, signed with Ed25519 key {info.key_id}; registered "
                f"by {info.created_by} on {info.created_at.isoformat(timespec='seconds')}. Verified when "
                f"this card was made: {report_v.files} files, {report_v.bytes:,} bytes, "
                f"{report_v.attestations} attestation(s). Check it yourself:",
                Code(f"yard models verify {info.spec}"),
            ],
        )
    )
    return Card(f"Model card: {info.spec}", sections)
