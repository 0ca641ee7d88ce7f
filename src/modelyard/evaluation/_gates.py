"""Quality gates: evaluate a registered version against a policy and store the signed result.

One pass over the policy's evaluation set measures everything the checks need: the metrics overall and per
slice, the metric on perturbed inputs (robustness), latency at batch 1 on a fixed input set, and the size on
disk. A relative bound (``rougeL >= production - 0.01``) evaluates the alias's version on the same examples
with the same decoding, so both numbers are comparable; a protected alias (production) the model never had
skips the check and says so, and any other alias that points nowhere fails it. The result (every check, its
value, bound and verdict) is stored on the version as a signed attestation; :func:`gate_runner` adapts
:func:`check_gates` for ``registry.promote``.
"""

from __future__ import annotations

import difflib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from modelyard.core._platform import Context, Platform
from modelyard.errors import IntegrityError, NotFoundError, UsageError
from modelyard.evaluation._perturb import perturb
from modelyard.evaluation._policy import EvalData, GatePolicy
from modelyard.evaluation._speed import latency_ms
from modelyard.training._data import Example
from modelyard.training._eval import MISSING_GROUP

if TYPE_CHECKING:
    from modelyard.registry import VersionInfo
    from modelyard.training._recipe import DataSection

_OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


@dataclass
class Check:
    name: str  # e.g. "metrics: rougeL >= 0.6", "fairness: rougeL gap (locale)"
    kind: str  # metric | fairness | robustness | latency | size
    value: float | None
    bound: float | None
    op: str
    passed: bool
    note: str = ""

    @property
    def margin(self) -> float | None:
        """How far the value is past the bound (negative: by how much it failed)."""
        if self.value is None or self.bound is None:
            return None
        return self.value - self.bound if self.op in (">=", ">") else self.bound - self.value

    def describe(self) -> str:
        if self.value is None or self.bound is None:
            return f"{self.name}: {self.note or ('passed' if self.passed else 'failed')}"
        verdict = "ok" if self.passed else f"FAILED by {abs(self.margin or 0):.4g}"
        return f"{self.name}: {self.value:.4g} {self.op} {self.bound:.4g} {verdict}" + (
            f" ({self.note})" if self.note else ""
        )


@dataclass
class GateReport:
    spec: str
    passed: bool
    checks: list[Check]
    measured: dict[str, Any] = field(default_factory=dict)
    attestation: int | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        bad = self.failed
        if not bad:
            return f"all {len(self.checks)} checks passed"
        return "; ".join(c.describe() for c in bad)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "measured": self.measured,
        }


def eval_examples(
    platform: Platform, ctx: Context, data: EvalData, *, trained_with: DataSection | None = None
) -> list[Example]:
    """The policy's evaluation examples: the chosen member of the dataset version, a seeded sample of at
    most ``max_samples`` in file order. ``trained_with``: the data section of the recipe that trained the
    model (see :func:`_eval_set`)."""
    return _eval_set(platform, ctx, data, trained_with)[0]


def _eval_set(
    platform: Platform, ctx: Context, data: EvalData, trained_with: DataSection | None
) -> tuple[list[Example], str, bool]:
    """(examples, member file, whether they were cut as the run did). A version holding one table that the
    run cut by ratios gives the run's own ``data.split`` of it (never its training rows)."""
    from modelyard.data import get
    from modelyard.training._data import read_split
    from modelyard.training._recipe import DataSection

    section = DataSection(
        train=data.dataset,
        file=data.file,
        format=data.format,
        source_field=data.source_field,
        target_field=data.target_field,
        group_field=data.group_field,
    )
    root = get(data.dataset, platform=platform, ctx=ctx)
    rows, member, cut = read_split(root, data.dataset, section, data.split, trained_with)
    if not rows:
        raise NotFoundError(f"{data.dataset}:{member} holds no examples to evaluate on")
    if len(rows) > data.max_samples:
        keep = sorted(random.Random(data.seed).sample(range(len(rows)), data.max_samples))
        rows = [rows[i] for i in keep]
    return rows, member, cut


def _check_split(data: EvalData, member: str, cut: bool) -> None:
    check_split(data.dataset, member, data.split, data.file, "split" in data.model_fields_set, cut)


def check_split(
    dataset: str, member: str, split: str, file: str | None, split_named: bool, cut: bool
) -> None:
    """Refuse a member that is not the ``split`` being evaluated on. The one table of a version is picked
    whatever it is called, so without this ``split: test`` would measure the training rows of a version
    holding only ``train.jsonl``; a ``file`` named for another split contradicts an explicitly named
    (``split_named``) split. ``cut``: the member is the table the model's run cut by ratios. The message
    names the policy's keys; ``yard eval`` puts its flags in their place."""
    from modelyard.training._data import SPLIT_NAMES

    stem = PurePosixPath(member).stem
    if cut or stem == split:
        return
    if file is None or (stem in SPLIT_NAMES and split_named):
        raise UsageError(
            f"data.split is {split!r} but {dataset}:{member} is not the {split} split "
            "(nor a table the model's run cut by ratios); name the member to evaluate on with data.file, "
            f"or use a version that holds {split}.jsonl"
        )


def _trained_with(platform: Platform, ctx: Context, spec: str) -> DataSection | None:
    """The data section of the recipe that trained ``spec`` (an optimised variant: its parent's), from its
    signed manifest; None when it records no recipe (a model registered from a directory)."""
    from modelyard.registry import read_manifest
    from modelyard.training._recipe import recorded_recipe

    _, manifest = read_manifest(platform, ctx, spec)
    recipe = recorded_recipe(platform, manifest, spec)
    if recipe is not None:
        return recipe.data
    parent = (manifest.get("lineage") or {}).get("parent")
    return _trained_with(platform, ctx, parent) if parent else None


def _predict(model: Any, rows: Sequence[Example], policy: GatePolicy) -> list[str]:
    return list(
        model.generate(
            [r.source for r in rows],
            max_new_tokens=policy.decoding.max_new_tokens,
            batch_size=policy.decoding.batch_size,
        )
    )


def _score(
    model: Any,
    rows: Sequence[Example],
    policy: GatePolicy,
    metrics: list[str],
    preds: list[str] | None = None,
) -> Any:
    from modelyard.training._eval import score

    preds = preds if preds is not None else _predict(model, rows, policy)
    return score(preds, [r.target for r in rows], metrics, groups=[r.group for r in rows])


def check_gates(
    platform: Platform, ctx: Context, spec: str, policy: GatePolicy, *, attest: bool = True
) -> GateReport:
    """Evaluate ``spec`` against ``policy``; store the signed result on the version unless ``attest`` is
    False. Raises only for errors (missing data, unreadable version); failed checks are in the report."""
    from modelyard.registry import show
    from modelyard.registry._aliases import store_attestation

    info = show(platform, ctx, spec)
    exact = info.spec
    if not attest:
        return _measure(platform, ctx, info, policy)
    platform.authorize(ctx, "model.register", f"model:{exact}")  # before the evaluation, not after minutes
    # An attestation that cannot be made is a refused one, or a failed one (torch's RuntimeError), on record.
    with platform.attempt(ctx, "model.register", f"model:{exact}"):
        report = _measure(platform, ctx, info, policy)
    body = {**report.to_dict(), "policy": policy.model_dump(mode="json")}
    report.attestation = store_attestation(platform, ctx, exact, "gates", body, passed=report.passed)
    return report


def _measure(platform: Platform, ctx: Context, info: VersionInfo, policy: GatePolicy) -> GateReport:
    """:func:`check_gates` without the attestation: every check measured and judged."""
    from modelyard.registry import load

    exact = info.spec
    trained_with = _trained_with(platform, ctx, exact)
    rows, member, cut = _eval_set(platform, ctx, policy.data, trained_with)
    _check_split(policy.data, member, cut)
    metrics = policy.needed_metrics() or ["rougeL"]
    threads = policy.latency.threads if policy.latency else None
    model = load(exact, platform=platform, ctx=ctx, threads=threads)
    clean_preds = _predict(model, rows, policy)
    clean = _score(model, rows, policy, metrics, clean_preds)
    measured: dict[str, Any] = {
        "examples": len(rows),
        "data": policy.data.dataset,
        "file": member,
        "split": policy.data.split + (" (cut by ratios as the model's run did)" if cut else ""),
        "metrics": dict(clean.overall),
        "slices": {g: {"n": clean.slice_sizes[g], **m} for g, m in clean.slices.items()},
    }
    checks: list[Check] = []

    references: dict[str, dict[str, float] | None] = {}
    for c in policy.checks:
        value = clean.overall[c.metric]
        if c.alias is None:
            assert c.bound is not None
            checks.append(
                Check(f"metrics: {c.text}", "metric", value, c.bound, c.op, _OPS[c.op](value, c.bound))
            )
            continue
        if c.alias not in references:
            references[c.alias] = _reference_scores(
                platform, ctx, info.name, c.alias, exact, rows, policy, metrics, clean.overall
            )
        ref = references[c.alias]
        if ref is None:
            missing = _missing_alias(platform, ctx, info.name, c.alias)
            checks.append(
                Check(
                    f"metrics: {c.text}",
                    "metric",
                    value,
                    None,
                    c.op,
                    missing.startswith("skipped"),
                    missing,
                )
            )
            continue
        bound = ref[c.metric] + c.offset
        checks.append(
            Check(
                f"metrics: {c.text}",
                "metric",
                value,
                bound,
                c.op,
                _OPS[c.op](value, bound),
                f"{c.alias} scores {ref[c.metric]:.4g}",
            )
        )
    measured["references"] = {k: v for k, v in references.items() if v is not None}

    for f in policy.fairness:
        group = f.group or policy.data.group_field
        if group != policy.data.group_field:
            regrouped = policy.data.model_copy(update={"group_field": group})
            rows_g = _eval_set(platform, ctx, regrouped, trained_with)[0]
            scores = _score(model, rows_g, policy, metrics)
        else:
            scores = clean
        judged = {g: m[f.metric] for g, m in scores.slices.items() if scores.slice_sizes[g] >= f.min_examples}
        small = sorted(set(scores.slices) - set(judged))
        note = f"slices under {f.min_examples} examples not judged: {', '.join(small)}" if small else ""
        if len(judged) < 1:
            checks.append(
                Check(
                    f"fairness: {f.metric} by {group}",
                    "fairness",
                    None,
                    None,
                    "",
                    False,
                    f"no slice of {group!r} has {f.min_examples}+ examples",
                )
            )
            continue
        if f.max_gap is not None:
            # Rows without a group value are no group to compare; one slice has no gap to measure, and
            # calling it 0 would pass any bound.
            groups = {g: v for g, v in judged.items() if g != MISSING_GROUP}
            if len(groups) < 2:
                checks.append(
                    Check(
                        f"fairness: {f.metric} gap between {group} slices",
                        "fairness",
                        None,
                        f.max_gap,
                        "<=",
                        False,
                        f"a gap needs 2+ slices of {group!r} with {f.min_examples}+ examples and a value; "
                        f"judged: {', '.join(sorted(groups)) or '(none)'}" + (f"; {note}" if note else ""),
                    )
                )
            else:
                # Ordered by value then name: with every slice equal, the note still names two of them.
                order = sorted(groups, key=lambda g: (groups[g], g))
                worst, best = order[0], order[-1]
                gap = groups[best] - groups[worst]
                checks.append(
                    Check(
                        f"fairness: {f.metric} gap between {group} slices",
                        "fairness",
                        gap,
                        f.max_gap,
                        "<=",
                        gap <= f.max_gap,
                        f"{best} {groups[best]:.4g} vs {worst} {groups[worst]:.4g}"
                        + (f"; {note}" if note else ""),
                    )
                )
        if f.min is not None and all(g == MISSING_GROUP for g in judged):
            # The rows without a group value are the only slice: judging them checks the whole set against
            # the minimum, no group at all, and passed a fairness gate on a column null in every row.
            checks.append(
                Check(
                    f"fairness: {f.metric} of each {group} slice",
                    "fairness",
                    None,
                    f.min,
                    ">=",
                    False,
                    f"no slice of {group!r} with a group value has {f.min_examples}+ examples"
                    + (f"; {note}" if note else ""),
                )
            )
        elif f.min is not None:
            for g, v in sorted(judged.items()):
                checks.append(
                    Check(f"fairness: {f.metric} of {group}={g}", "fairness", v, f.min, ">=", v >= f.min)
                )

    if policy.robustness is not None:
        rb = policy.robustness
        varied = perturb([r.source for r in rows], rb.perturbations, rb.seed)
        # An input the perturbation left as it was scores as its clean self and would pull the ratio
        # toward 1: only the changed ones are compared, clean against perturbed.
        kept = [i for i, ((_, text), r) in enumerate(zip(varied, rows, strict=True)) if text != r.source]
        unchanged = Counter(varied[i][0] for i in set(range(len(rows))) - set(kept))
        left_out = f"; {sum(unchanged.values())} unchanged examples left out" if unchanged else ""
        name = f"robustness: {rb.metric} on perturbed / clean inputs"
        if not kept:
            checks.append(
                Check(name, "robustness", None, rb.min_ratio, ">=", False, "no perturbation changed an input")
            )
        else:
            noisy = _score(
                model,
                [Example(varied[i][1], rows[i].target, varied[i][0]) for i in kept],
                policy,
                [rb.metric],
            )
            same = _score(model, [rows[i] for i in kept], policy, [rb.metric], [clean_preds[i] for i in kept])
            base, value = same.overall[rb.metric], noisy.overall[rb.metric]
            # A clean score of 0 leaves no ratio to judge (0 vs 0 is no evidence of robustness): it fails.
            ratio = value / base if base > 0 else None
            measured["robustness"] = {
                "clean": base,
                "perturbed": value,
                "examples": len(kept),
                "unchanged": dict(sorted(unchanged.items())),
                "by_kind": {k: m[rb.metric] for k, m in noisy.slices.items()},
            }
            checks.append(
                Check(
                    name,
                    "robustness",
                    ratio,
                    rb.min_ratio,
                    ">=",
                    ratio is not None and ratio >= rb.min_ratio,
                    f"{value:.4g} perturbed vs {base:.4g} clean on {len(kept)} changed inputs; "
                    + ("no ratio to judge: the clean score is 0; " if ratio is None else "")
                    + f"{', '.join(rb.perturbations)}{left_out}",
                )
            )

    if policy.latency is not None:
        lat = latency_ms(
            model,
            [r.source for r in rows],
            max_new_tokens=policy.decoding.max_new_tokens,
            samples=policy.latency.samples,
            warmup=policy.latency.warmup,
        )
        measured["latency"] = lat
        checks.append(
            Check(
                "latency: p95 at batch 1 (ms)",
                "latency",
                lat["p95_ms"],
                policy.latency.p95_ms,
                "<=",
                lat["p95_ms"] <= policy.latency.p95_ms,
                f"p50 {lat['p50_ms']:.1f} ms",
            )
        )
    if policy.size is not None:
        mb = info.bytes / 1e6
        measured["size_mb"] = mb
        checks.append(
            Check("size: on disk (MB)", "size", mb, policy.size.max_mb, "<=", mb <= policy.size.max_mb)
        )

    return GateReport(exact, all(c.passed for c in checks), checks, measured)


def _reference_scores(
    platform: Platform,
    ctx: Context,
    name: str,
    alias: str,
    exact: str,
    rows: Sequence[Example],
    policy: GatePolicy,
    metrics: list[str],
    clean: dict[str, float],
) -> dict[str, float] | None:
    from modelyard.registry import load, show

    try:
        ref = show(platform, ctx, f"{name}@{alias}")
    except NotFoundError:
        return None
    except IntegrityError as exc:
        # A record that does not check (unsigned or altered) is trusted for nothing, not even for naming
        # the version under test: whoever repointed its row would have that version compared with itself.
        raise IntegrityError(
            f"{exc.message}. A check relative to {alias!r} has nothing trusted to compare with: promote "
            f"with a policy without checks relative to {alias!r} (its other checks still run) to point "
            "it again",
            file="alias",
        ) from None
    if ref.spec == exact:
        return dict(clean)  # the alias points at this version already
    # With the policy's thread count too: loading sets torch's process-wide count, and the latency of the
    # version under test is measured after this load.
    threads = policy.latency.threads if policy.latency else None
    ref_model = load(ref.spec, platform=platform, ctx=ctx, threads=threads)
    return dict(_score(ref_model, rows, policy, metrics).overall)


def _missing_alias(platform: Platform, ctx: Context, name: str, alias: str) -> str:
    """The note of a relative check whose alias points nowhere. Only a protected alias the model never had
    is skipped (the first promotion to production has nothing to compare with); any other is a typo or a
    deleted alias, and passing it would let a misspelt bound wave every version through."""
    from modelyard.registry import PROTECTED, history

    events = history(platform, ctx, name)
    if alias in PROTECTED and all(e.alias != alias for e in events):
        return f"skipped: nothing at {name}@{alias} yet"
    now: dict[str, int | None] = {}
    for e in events:
        now[e.alias] = e.version
    aliases = sorted(a for a, v in now.items() if v is not None)
    close = difflib.get_close_matches(alias, aliases, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; its aliases: {', '.join(aliases) or '(none)'}"
    was = "no longer points at a version" if alias in now else "does not exist"
    return f"{name}@{alias} {was}{hint}"


def gate_runner(policy: GatePolicy) -> Any:
    """``registry.promote(..., gates=gate_runner(policy))``: run the gates, store the attestation, and
    return (passed, summary of the failed checks with their numbers)."""

    def run(platform: Platform, ctx: Context, spec: str) -> tuple[bool, str]:
        report = check_gates(platform, ctx, spec, policy)
        return report.passed, report.summary()

    return run
