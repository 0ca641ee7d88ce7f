"""Alert rules, evaluated on a schedule by ``yard monitor run``, and their actions: log, webhook, retrain.

```yaml
model: support-t5@production
window: 1h                          # what "recent" means for every signal
cooldown: 1h                        # a rule that fired stays quiet this long
rules:
  - {name: input drift, when: drift.input > 0, actions: [log, retrain]}
  - {name: quality drop, when: quality_drop.rougeL > 0.05, actions: [log, webhook]}
  - {name: slow, when: latency.p95_ms > 500, min_samples: 50, actions: [webhook]}
webhook: {url: https://hooks.example/yard, allow_hosts: [hooks.example], allow_networks: []}
retrain:
  recipe: examples/flan-t5/recipe-tiny.yaml    # submitted as a job with its datasets at their newest versions
  policy: examples/flan-t5/gates.yaml          # the retrained version must pass these gates
  canary_weight: 10                            # then it is deployed as a canary at this weight
```

Signals: ``drift.share`` (share of drifted columns), ``drift.input`` / ``drift.output`` (1 when that column
drifted), ``quality.<metric>`` and ``quality_drop.<metric>`` (evaluation minus now, from feedback),
``latency.p50_ms`` / ``latency.p95_ms`` and ``requests`` from the prediction log. A rule's condition is
``SIGNAL OP NUMBER`` (parsed, never evaluated); a signal without data (no feedback yet) never fires, and
a condition no value of its signal can meet (``drift.share > 1``, a BLEU of 25 for 0.25) is refused. A rule's
``min_samples`` (default 1) is how many observations its signal must rest on before it may fire: requests for
latency, this version's predictions for drift, feedback examples for quality (``requests`` is a count, exact
on no traffic at all, and takes none).

A rule that fired is quiet for the cooldown, except for its actions that failed: they are tried again at
each run while the condition holds. A monitor claims a rule before acting on it (a compare-and-set with a
fresh nonce), so of two monitors of one model only one acts; a claim left by a monitor that died is taken
over, with the actions it left undone, after ``CLAIM_LEASE``. Every alert and every action (and its
failure) is an audit record. A retrain is followed through on later runs: once its job finishes, the new
version is registered from the job's run, gated, and deployed as a canary; each step is audited.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from modelyard.core._platform import Context, Platform, utcnow
from modelyard.errors import BackendError, CollectedMeanwhileError, UsageError, ValidationError, YardError

log = logging.getLogger("modelyard.monitoring")
# How long a monitor's claim on a rule keeps others off it while it acts (a webhook times out well within
# this); a claim older than this was left by a monitor that died, and its undone actions are taken over.
CLAIM_LEASE = timedelta(minutes=10)
# How far ahead of this host's clock a run's time may be (a scheduler's clock running a little fast): what a
# run records is stamped with its time, and a stamp further ahead would stretch its rules' cooldowns.
CLOCK_SKEW = timedelta(minutes=5)
_RULE_RE = re.compile(
    r"^\s*(?P<signal>[a-z_]+(?:\.[A-Za-z0-9_]+)?)\s*(?P<op>>=|<=|>|<)\s*(?P<n>-?\d+(?:\.\d+)?)\s*$"
)
_SIGNALS = re.compile(
    r"^(drift\.(share|input|output)|quality\.\w+|quality_drop\.\w+|latency\.p(50|95)_ms|requests)\Z"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


def _check_when(text: str) -> str:
    m = _RULE_RE.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(
            f"{text!r} is not a condition; expected 'SIGNAL OP NUMBER' such as 'drift.share > 0.3'"
        )
    signal = m["signal"]
    if not _SIGNALS.match(signal):
        raise ValueError(
            f"unknown signal {signal!r}; expected drift.share, drift.input, drift.output, "
            "quality.METRIC, quality_drop.METRIC, latency.p50_ms, latency.p95_ms or requests"
        )
    if signal.startswith("quality"):
        from modelyard.training._recipe import EVAL_METRICS

        if signal.split(".", 1)[1] not in EVAL_METRICS:
            raise ValueError(
                f"{signal} is not a metric monitoring scores; expected one of {', '.join(EVAL_METRICS)}"
            )
    # A condition no value of its signal satisfies is a rule that stays silent forever, with nothing to say
    # why (the monitor reports only rules that fire).
    lo, hi, said = _signal_range(signal)
    op, n = m["op"], float(m["n"])
    if {">": n >= hi, ">=": n > hi, "<": n <= lo, "<=": n < lo}[op]:
        raise ValueError(f"{text.strip()!r} can never hold, since {signal} is {said}; fix the threshold")
    return text.strip()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


Action = Literal["log", "webhook", "retrain"]
_LOG_ONLY: list[Action] = ["log"]


def _once_each(actions: list[Action]) -> list[Action]:
    # One alert runs each action once: a second webhook call or retrain for one condition is noise, and
    # the bookkeeping of what is still pending counts actions by name.
    twice = next((a for i, a in enumerate(actions) if a in actions[:i]), None)
    if twice is not None:
        raise ValueError(f"{twice!r} is named twice; list each action once")
    return actions


class Rule(_Section):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    # Bounded before parsing: errors quote what they refuse, and a 1 MiB file may hold a 900 KB condition.
    when: Annotated[str, Field(max_length=200), AfterValidator(_check_when)]
    actions: Annotated[list[Action], Field(min_length=1), AfterValidator(_once_each)] = Field(
        default_factory=lambda: _LOG_ONLY.copy()
    )
    # How many observations the signal must rest on before the rule may fire: a p95 of three requests or
    # a ROUGE of one feedback is noise, and a retrain on noise is costly.
    min_samples: Annotated[int, Field(ge=1, le=1_000_000_000)] = 1

    @field_validator("min_samples")
    @classmethod
    def _not_for_a_count(cls, value: int, info: ValidationInfo) -> int:
        m = _RULE_RE.match(info.data.get("when") or "")  # absent: `when` was refused (and is said)
        if m is not None and m["signal"] == "requests" and value != 1:
            raise ValueError(
                "does not apply to requests, which is a count (a rule such as 'requests < 1' must fire on "
                "no traffic at all); leave it out"
            )
        return value


class Webhook(_Section):
    url: str
    allow_hosts: list[str] = Field(default_factory=list)
    allow_networks: list[str] = Field(default_factory=list)


class Retrain(_Section):
    recipe: str
    policy: str
    # At most half: more is a promotion, which takes an approver other than the one who registered it.
    canary_weight: Annotated[int, Field(ge=1, le=50)] = 10
    cpus: Annotated[float, Field(gt=0)] = 1.0


class AlertPolicy(_Section):
    model: Annotated[str, Field(max_length=300)]  # NAME@ALIAS: names and aliases are far shorter
    window: str = "1h"
    cooldown: str = "1h"
    rules: Annotated[list[Rule], Field(min_length=1)]
    webhook: Webhook | None = None
    retrain: Retrain | None = None

    def check(self) -> AlertPolicy:
        """What the schema cannot see (the windows, rule names and actions against the sections, the files
        they name): every problem found, in one error, rather than one per fix-and-rerun."""
        from modelyard.monitoring._monitor import parse_window
        from modelyard.registry._versions import parse_spec

        problems: list[YardError] = []

        def attempt(where: str, check: Callable[[], object]) -> None:
            try:
                check()
            except YardError as exc:  # the same kind of error, said with where it is
                problems.append(type(exc)(f"{where}: {exc.message}"))

        attempt("model", lambda: parse_spec(self.model))
        attempt("window", lambda: parse_window(self.window))
        attempt("cooldown", lambda: parse_window(self.cooldown))
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            where = f"rules[{i}] ({rule.name!r})"
            if rule.name in seen:  # their cooldowns would be one: the second could never fire
                problems.append(
                    UsageError(
                        f"{where}.name: two rules are named {rule.name!r}; give each rule its own name"
                    )
                )
            seen.add(rule.name)
            for action, section in (("webhook", self.webhook), ("retrain", self.retrain)):
                if action in rule.actions and section is None:
                    problems.append(
                        UsageError(
                            f"{where}.actions: {action} is named, but the policy has no {action} section"
                        )
                    )
        if self.retrain is not None:
            # Validated now, not when a rule first fires: a typo would surface as a failed retrain, tried
            # again at every run while the drift lasts. They are read again then (they may be fixed since).
            from modelyard.evaluation._policy import load_policy
            from modelyard.training._recipe import load_recipe

            for what, path, load in (
                ("recipe", self.retrain.recipe, load_recipe),
                ("policy", self.retrain.policy, load_policy),
            ):
                if not Path(path).is_file():
                    problems.append(UsageError(f"retrain.{what}: {path} is not a file"))
                else:
                    attempt(f"retrain.{what}", partial(load, path))
        if self.webhook is not None:
            from modelyard.monitoring._webhook import WebhookPolicy, check_url

            hook = self.webhook
            # No DNS lookup here (validating a file needs no network): send() resolves the host and checks
            # every address it gets then, which is the check that counts (a name can change its addresses).
            attempt(
                "webhook",
                lambda: check_url(
                    hook.url, WebhookPolicy.parse(hook.allow_hosts, hook.allow_networks), resolve=False
                ),
            )
        if len(problems) == 1:
            raise problems[0]
        if problems:
            # The kind all of them are (a ValidationError when every one is, else a UsageError).
            kind = next(c for c in type(problems[0]).__mro__ if all(isinstance(p, c) for p in problems))
            said = [p.message for p in problems]
            raise kind(f"invalid alert rules, {len(said)} problems: " + "; ".join(said), problems=said)
        return self


def _signal_range(signal: str) -> tuple[float, float, str]:
    """The values a signal can take, and how to say so."""
    from modelyard.training._eval import RATE_METRICS

    if signal.startswith("drift."):
        return 0.0, 1.0, "between 0 and 1"
    if signal.startswith("quality"):
        kind, metric = signal.split(".", 1)
        if metric in RATE_METRICS:
            lo = 0.0 if kind == "quality" else -1.0
            return lo, 1.0, f"between {lo:g} and 1 (rates are in [0, 1]: a BLEU of 25 is 0.25)"
        if kind == "quality_drop":  # a length's drop: the evaluation's length minus today's, either sign
            return -math.inf, math.inf, "a finite number"
    return 0.0, math.inf, "at least 0"  # gen_len, latency, requests


def load_alerts(path: str | Path) -> AlertPolicy:
    from modelyard.training._recipe import parse_model, read_yaml

    policy = parse_model(AlertPolicy, read_yaml(path, "alert rules"), source=str(path), kind="alert rules")
    base = Path(path).parent
    if policy.retrain is not None:  # recipe and policy paths are relative to the rules file
        policy = policy.model_copy(
            update={
                "retrain": policy.retrain.model_copy(
                    update={
                        "recipe": str(base / policy.retrain.recipe),
                        "policy": str(base / policy.retrain.policy),
                    }
                )
            }
        )
    return policy.check()


# -- state kept in the metadata store ---------------------------------------------------------------------


def _key(kind: str, project_id: int, *parts: str) -> str:
    """The store key of a rule's or a retrain's state: per project, as model names are (another tenant's
    model of the same name must not share its cooldowns or pending retrain)."""
    return (
        f"monitor:{kind}:" + hashlib.sha256("\x00".join([str(project_id), *parts]).encode()).hexdigest()[:40]
    )


def _get(platform: Platform, key: str) -> dict[str, Any] | None:
    value = platform.meta(key)
    return json.loads(value) if value else None


def _put(platform: Platform, key: str, value: dict[str, Any]) -> None:
    from modelyard.core._models import Meta

    with platform.db.write() as s:
        s.merge(Meta(key=key, value=json.dumps(value)))


def _claim(platform: Platform, key: str, seen: str | None, value: dict[str, Any]) -> str | None:
    """Write ``value`` only if the state is still ``seen`` (the raw value read before deciding to act), and
    return what was written (None: someone else changed it first). Of two monitors evaluating one model at
    once, only one acts on a rule (and submits its retrain)."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from modelyard.core._models import Meta

    raw = json.dumps(value)
    try:
        with platform.db.write() as s:  # SQLite: BEGIN IMMEDIATE; PostgreSQL: the row locked
            row = s.execute(select(Meta).where(Meta.key == key).with_for_update()).scalar_one_or_none()
            if (row.value if row is not None else None) != seen:
                return None
            if row is None:
                s.add(Meta(key=key, value=raw))
            else:
                row.value = raw
    except IntegrityError:  # both inserted the first state (PostgreSQL locks no absent row): the other won
        return None
    return raw


# -- evaluation -------------------------------------------------------------------------------------------


@dataclass
class Fired:
    rule: str
    condition: str
    value: float
    actions: list[str] = field(default_factory=list)  # what each action did
    retry: bool = False  # in its cooldown: only the actions that failed when it fired were tried again


@dataclass
class MonitorResult:
    model: str
    signals: dict[str, float]
    fired: list[Fired]
    quiet: list[str]  # rules whose condition held but that are cooling down
    retrains: list[str]  # what happened to pending retrains
    problems: list[str] = field(default_factory=list)  # signals that could not be computed, and why
    unjudged: list[str] = field(default_factory=list)  # rules that held on fewer samples than they ask


def signals(
    platform: Platform,
    ctx: Context,
    spec: str,
    window: timedelta,
    problems: list[str] | None = None,
    *,
    now: datetime | None = None,
    samples: dict[str, int] | None = None,
) -> dict[str, float]:
    """The signals rules may name, each over the window that ends at ``now`` (default: the clock). A signal
    without data is absent (its rules never fire); one that could not be computed (the version's training
    data is gone, ...) is absent too, and said in ``problems``: its rules would otherwise stay silent with
    no reason given. ``samples`` receives how many observations each kind of signal rests on (``requests``,
    ``latency``, ``drift``, ``quality``)."""
    from modelyard.monitoring._monitor import NoPredictions, model_drift, quality, serving_stats
    from modelyard.registry import show

    info = show(platform, ctx, spec)
    now = now or utcnow()  # one end for every signal: they judge the same window
    stats = serving_stats(platform, ctx, info.name, window=window, now=now)
    out = {"requests": stats["requests"]}
    sizes = {"requests": int(stats["requests"]), "latency": int(stats["requests"])}
    out.update({f"latency.{k}": stats[k] for k in ("p50_ms", "p95_ms") if k in stats})
    if out["requests"]:
        try:
            _, report, sizes["drift"] = model_drift(platform, ctx, spec, window=window, now=now)
        except NoPredictions:  # the version answered nobody in the window (a canary took the traffic)
            pass
        except Exception as exc:  # the other signals and rules still count
            message = f"drift signals unavailable: {_said(exc)}"
            log.warning("%s: %s", spec, message)
            if problems is not None:
                problems.append(message)
        else:
            out["drift.share"] = report.share_drifted
            for col in report.columns:
                out[f"drift.{col.name}"] = 1.0 if col.drifted else 0.0
    q = quality(platform, ctx, spec, window=window, now=now)
    sizes["quality"] = q.examples
    if samples is not None:
        samples.update(sizes)
    if q.examples:
        out.update({f"quality.{k}": v for k, v in q.metrics.items()})
        out.update({f"quality_drop.{k}": v for k, v in q.drop.items()})
    return {k: float(v) for k, v in out.items()}


def run_once(
    platform: Platform, ctx: Context, policy: AlertPolicy, *, now: datetime | None = None
) -> MonitorResult:
    """Evaluate every rule once, act on those that fire (outside their cooldown), advance retrains."""
    from modelyard.monitoring._monitor import parse_window
    from modelyard.registry._versions import parse_spec

    # Engineer: a run records alert state (cooldowns others' rules share) and may retrain and deploy.
    platform.authorize(ctx, "model.deploy", f"model:{policy.model}")
    name = parse_spec(policy.model)[0]
    now = _run_time(now)
    window, cooldown = parse_window(policy.window), parse_window(policy.cooldown)
    problems: list[str] = []
    samples: dict[str, int] = {}
    values = signals(platform, ctx, policy.model, window, problems, now=now, samples=samples)
    fired: list[Fired] = []
    quiet: list[str] = []
    unjudged: list[str] = []
    for rule in policy.rules:
        m = _RULE_RE.match(rule.when)
        assert m is not None
        value = values.get(m["signal"])
        if value is None or not _OPS[m["op"]](value, float(m["n"])):
            continue
        n = samples.get(m["signal"].split(".")[0].removesuffix("_drop"), 0)
        if m["signal"] != "requests" and n < rule.min_samples:  # a count is exact, not an estimate
            unjudged.append(
                f"rule {rule.name!r} holds ({m['signal']} = {value:.4g}) on {n} samples in the window, "
                f"fewer than its min_samples {rule.min_samples}: not fired"
            )
            continue
        key = _key("rule", ctx.project_id, name, rule.name)
        seen = platform.meta(key)
        state = json.loads(seen) if seen else {}
        pending: list[str] = state.get("pending") or []
        claimed_at = state.get("claimed_at")
        # Leases run on the clock, whatever time the run judges at: a replay at a past time acts now, and
        # its claim must keep a monitor running at the present off the rule while it does.
        if pending and claimed_at and _held(claimed_at):
            quiet.append(rule.name)  # another monitor is acting on it right now
            continue
        last = state.get("fired_at")
        retry = last is not None and now - datetime.fromisoformat(last).astimezone(UTC) < cooldown
        if retry:
            # Cooling down, except for the actions that failed when it fired (the webhook was down) and those
            # a run that died left undone: an alert that reached nobody is tried again at each run while the
            # condition holds.
            actions = [a for a in dict.fromkeys(state.get("failed", []) + pending) if a in rule.actions]
            if not actions:
                quiet.append(rule.name)
                continue
        else:
            actions, last = list(rule.actions), now.isoformat()
        # Claimed before acting, every action still to do, under a fresh nonce (so two retries of the same
        # state cannot both win): the others see it pending, and a run killed halfway leaves the rest pending
        # for the next run after the lease.
        current: dict[str, Any] = {
            "fired_at": last,
            "failed": [],
            "pending": actions,
            "claim": secrets.token_hex(8),
            "claimed_at": utcnow().isoformat(),
        }
        held = _claim(platform, key, seen, current)
        if held is None:
            quiet.append(rule.name)  # another monitor claimed it between our read and our write
            continue
        alert = Fired(rule.name, rule.when, value, retry=retry)
        detail: dict[str, Any] = {"rule": rule.name, "when": rule.when, "value": value}
        if retry:
            detail["retry"] = actions
        platform.audit(ctx, "monitor.alert", f"model:{policy.model}", "ok", detail)
        for action in actions:
            outcome, ok = _act(platform, ctx, policy, name, action, alert, values, now)
            alert.actions.append(outcome)
            done = {
                **current,
                "pending": [a for a in current["pending"] if a != action],
                "failed": current["failed"] + ([] if ok else [action]),
            }
            if held is not None:
                held = _claim(platform, key, held, done)  # None: our lease ran out and another took over
                current = done
        if held is None:
            log.warning("%s: rule %s was taken over by another monitor while acting", policy.model, rule.name)
        fired.append(alert)
    try:
        retrains = advance_retrains(platform, ctx, policy, name)
    except Exception as exc:  # said and audited; the next run tries again from the recorded state
        message = _said(exc)
        platform.audit(ctx, "monitor.retrain", f"model:{policy.model}", "error", {"error": message})
        retrains = [f"retrain could not advance: {message}"]
    return MonitorResult(policy.model, values, fired, quiet, retrains, problems, unjudged)


def _run_time(now: datetime | None) -> datetime:
    """The time a run judges and records everything at: ``now`` (a replay, a scheduler's tick), else the
    clock. Not ahead of the clock: the fired and claimed times it records would keep a rule quiet, and
    other monitors off it, for that much longer than the cooldown and the lease say."""
    clock = utcnow()
    if now is None:
        return clock
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise ValidationError(
            f"now must be a datetime with a time zone, such as datetime.now(UTC); got {now!r}"
        )
    if now - clock > CLOCK_SKEW:
        raise ValidationError(
            f"now {now.isoformat()} is {now - clock} ahead of this host's clock (at most {CLOCK_SKEW} is "
            "allowed): a run records when its rules fired, and a time in the future would hold their "
            "cooldowns for that much longer; run at the present or a past time"
        )
    return now


def _held(claimed_at: str) -> bool:
    """Whether a claim made at ``claimed_at`` (the clock's time) is still within its lease."""
    return utcnow() - datetime.fromisoformat(claimed_at).astimezone(UTC) < CLAIM_LEASE


def _said(exc: Exception) -> str:
    """A failure as the audit log and the run's output say it: our message, else the kind and text."""
    return exc.message if isinstance(exc, YardError) else f"{type(exc).__name__}: {exc}"


def _act(
    platform: Platform,
    ctx: Context,
    policy: AlertPolicy,
    name: str,
    action: str,
    alert: Fired,
    values: dict[str, float],
    now: datetime,
) -> tuple[str, bool]:
    """(what the action did, whether it succeeded)."""
    detail: dict[str, Any] = {"rule": alert.rule, "action": action}
    try:
        if action == "log":
            log.warning(
                "alert %s on %s: %s (value %.4g)", alert.rule, policy.model, alert.condition, alert.value
            )
            outcome = "logged"
        elif action == "webhook":
            from modelyard.monitoring._webhook import WebhookPolicy, send

            assert policy.webhook is not None
            hook = policy.webhook
            payload = {
                "model": policy.model,
                "rule": alert.rule,
                "condition": alert.condition,
                "value": alert.value,
                "signals": values,
            }
            result = send(hook.url, payload, WebhookPolicy.parse(hook.allow_hosts, hook.allow_networks))
            outcome = f"webhook answered {result.status}"
        else:
            outcome = _start_retrain(platform, ctx, policy, name, now)
        detail["result"] = outcome
        platform.audit(ctx, "monitor.action", f"model:{policy.model}", "ok", detail)
        return outcome, True
    except Exception as exc:  # one failing action must not skip the others, the next rules or the loop
        message = _said(exc)
        detail["error"] = message
        platform.audit(ctx, "monitor.action", f"model:{policy.model}", "error", detail)
        return f"{action} failed: {message}", False


# -- retraining -------------------------------------------------------------------------------------------


def newest_data(
    platform: Platform, ctx: Context, recipe_text: str, source: str
) -> tuple[str, dict[str, str]]:
    """The recipe with every dataset version replaced by the dataset's newest version, and what changed."""
    from modelyard.data import list_versions
    from modelyard.training._recipe import parse_recipe, parse_yaml

    data = parse_yaml(recipe_text, source=source)
    recipe = parse_recipe(data, source=source)
    changes: dict[str, str] = {}
    section = dict(data.get("data") or {})
    for role, spec in recipe.data.versions().items():
        dataset = spec.split("@")[0]
        latest = f"{dataset}@{max(v.version for v in list_versions(platform, ctx, dataset))}"
        key = "dataset" if recipe.data.dataset is not None else role
        section[key] = latest
        if latest != spec:
            changes[spec] = latest
    import yaml

    return yaml.safe_dump({**data, "data": section}, sort_keys=False), changes


def _start_retrain(
    platform: Platform, ctx: Context, policy: AlertPolicy, name: str, now: datetime | None = None
) -> str:
    """Submit the retrain, recorded at the run's time ``now`` as the alert that started it; its claim against
    other monitors is a lease on the clock."""
    from modelyard.training._jobs import submit_job

    assert policy.retrain is not None
    now = now or utcnow()
    key = _key("retrain", ctx.project_id, name)
    seen = platform.meta(key)
    pending = json.loads(seen) if seen else None
    if pending is not None and pending.get("state") in ("queued", "registered"):
        return f"retrain already under way (job {pending.get('job')})"
    if pending is not None and pending.get("state") == "submitting" and _held(pending["at"]):
        return "retrain already under way (another monitor is submitting it)"
    text = Path(policy.retrain.recipe).read_text(encoding="utf-8")
    recipe, changes = newest_data(platform, ctx, text, policy.retrain.recipe)
    # What a retrain is made of: the data versions, and the recipe and gate policy as written now (a
    # fixed recipe or policy may retrain on the same data).
    made_of = (text, Path(policy.retrain.policy).read_text(encoding="utf-8"))
    digest = hashlib.sha256("\x00".join(made_of).encode()).hexdigest()[:16]
    used = [*sorted(_data_versions(recipe, policy.retrain.recipe)), f"recipe+policy:{digest}"]
    if (
        pending is not None
        and pending.get("state") in ("deployed", "gated-out")
        and pending.get("used") == used
    ):
        # The drift is still there, but a retrain on the same data would give the same model again.
        return (
            f"not retrained: job {pending.get('job')} already trained on {', '.join(used[:-1])} with this "
            f"recipe and policy ({pending.get('state')}); add a newer version of the data"
        )
    # Claimed before submitting (another monitor's rule may be retraining this model at the same moment):
    # of two, one submits; a claim whose monitor died is taken over after the lease.
    claim = {"state": "submitting", "claim": secrets.token_hex(8), "at": utcnow().isoformat()}  # a lease
    held = _claim(platform, key, seen, claim)
    if held is None:
        return "retrain already under way (another monitor is submitting it)"
    try:
        with tempfile.TemporaryDirectory(prefix="yard-retrain-") as tmp:
            path = Path(tmp) / Path(policy.retrain.recipe).name
            path.write_text(recipe, encoding="utf-8")
            job = submit_job(platform, ctx, path, cpus=policy.retrain.cpus, priority="high")
    except BaseException:
        _claim(platform, key, held, {**(pending or {}), "state": "failed", "at": now.isoformat()})
        raise
    _put(
        platform,
        key,
        {"state": "queued", "job": job.id, "data": changes, "used": used, "at": now.isoformat()},
    )
    moved = ", ".join(f"{a} -> {b}" for a, b in changes.items()) or "no newer data"
    return f"retrain job {job.id} submitted ({moved})"


def _data_versions(recipe_text: str, source: str) -> set[str]:
    from modelyard.training._recipe import parse_recipe, parse_yaml

    return set(parse_recipe(parse_yaml(recipe_text, source=source), source=source).data.versions().values())


def advance_retrains(platform: Platform, ctx: Context, policy: AlertPolicy, name: str) -> list[str]:
    """Follow a pending retrain: when its job finished, register its model, gate it, deploy it as a canary."""
    from modelyard.training._jobs import get_job

    key = _key("retrain", ctx.project_id, name)
    pending = _get(platform, key)
    if pending is None or pending.get("state") not in ("queued", "registered") or policy.retrain is None:
        return []
    job = get_job(platform, ctx, pending["job"])
    if job.status in ("QUEUED", "RUNNING", "SUBMITTED"):
        return [f"retrain job {job.id} is {job.status.lower()}"]
    resource = f"model:{policy.model}"
    if job.status != "SUCCEEDED" or job.run_id is None:
        _put(platform, key, {**pending, "state": "failed", "status": job.status})
        platform.audit(ctx, "monitor.retrain", resource, "error", {"job": job.id, "status": job.status})
        return [f"retrain job {job.id} ended {job.status}"]
    from modelyard.evaluation import check_gates, load_policy
    from modelyard.registry import list_versions, register
    from modelyard.serving._deploy import current, deploy, deployed_since

    if pending["state"] == "queued":  # registered once: a later failure resumes here, not with a new version
        try:
            # A version already registered from the run (by a monitor that died, or whose store write
            # failed, before it recorded so) is taken up: registering again would make a second copy.
            versions = list_versions(platform, ctx, name)
            info = next((v for v in versions if v.run_id == job.run_id and v.parent is None), None)
            if info is None:
                info = register(
                    platform, ctx, job.run_id, name, description=f"retrained by monitoring (job {job.id})"
                )
        except (BackendError, CollectedMeanwhileError) as exc:
            # A store outage, or `yard gc` racing the write: register recorded nothing and the run's model is
            # still there, so the state stays "queued" and the next run registers it. Retrying the job's
            # own model beats failing it: a new retrain would train again for the same result.
            audited = {"job": job.id, "error": exc.message, "retry": True}
            platform.audit(ctx, "monitor.retrain", resource, "error", audited)
            return [
                f"retrain job {job.id} succeeded, but its model could not be registered yet (tried again at "
                f"the next run): {exc.message}"
            ]
        except YardError as exc:
            # Retrying would fail the same way (the run stored no model, the monitor may not register, an
            # artifact fails its digest): failed, or it would stay pending for ever and block every later
            # retrain of this model.
            _put(platform, key, {**pending, "state": "failed", "error": exc.message})
            platform.audit(ctx, "monitor.retrain", resource, "error", {"job": job.id, "error": exc.message})
            return [f"retrain job {job.id} succeeded, but its model could not be registered: {exc.message}"]
        pending = {**pending, "state": "registered", "version": info.version}
        _put(platform, key, pending)
    spec = f"{name}@{pending['version']}"
    try:
        report = check_gates(platform, ctx, spec, load_policy(policy.retrain.policy))
    except YardError as exc:  # e.g. the gate policy file went missing: said, audited, tried again next run
        platform.audit(ctx, "monitor.retrain", resource, "error", {"job": job.id, "error": exc.message})
        return [f"retrained {spec} could not be gated: {exc.message}"]
    version = int(pending["version"])
    detail: dict[str, Any] = {"job": job.id, "version": version, "gates": report.passed}
    if not report.passed:
        _put(platform, key, {**pending, "state": "gated-out"})
        platform.audit(ctx, "monitor.retrain", resource, "refused", {**detail, "failed": report.summary()})
        return [f"retrained {spec} failed its gates: {report.summary()}"]
    # A deploy that committed before its error was raised (the connection lost after the commit), or by a
    # monitor that died before recording it, left the version served: deploying it again would be a second
    # deployment of it (and a human's since, at another weight, would be overridden).
    served = current(platform, ctx, name)
    if served is not None and served.candidate == version:
        _put(platform, key, {**pending, "state": "deployed"})
        platform.audit(ctx, "monitor.retrain", resource, "ok", {**detail, "deployed_already": True})
        return [
            f"retrained {spec} passed its gates and is deployed already ({served.mode} at {served.weight}%)"
        ]
    # Deployed so, then rolled back (a server's SLO rollback, a human) before this run: it is not served,
    # but deploying it again would bring back a model taken out of traffic. The history says (any deploy of
    # it since this retrain's job was submitted: the version cannot be older).
    if deployed_since(platform, ctx, name, version, job.submitted_at):
        _put(platform, key, {**pending, "state": "deployed"})
        platform.audit(
            ctx, "monitor.retrain", resource, "ok", {**detail, "deployed_already": True, "rolled_back": True}
        )
        why = (served.reason or served.mode) if served is not None else "no deployment now"
        return [
            f"retrained {spec} passed its gates and was deployed already, but has been rolled back since "
            f"({why}); it is not deployed again"
        ]
    try:
        deploy(
            platform,
            ctx,
            name,
            version=version,
            mode="canary",
            weight=policy.retrain.canary_weight,
            reason=f"retrained after an alert (job {job.id})",
        )
    except BackendError as exc:
        # A store outage (its artifacts could not be read to verify them, the metadata store failed): the
        # version is as good as it was, so the retrain stays pending and the next run deploys it, rather
        # than a new retrain training again for the same result.
        platform.audit(
            ctx, "monitor.retrain", resource, "error", {**detail, "error": exc.message, "retry": True}
        )
        return [
            f"retrained {spec} passed its gates but could not be deployed yet (tried again at the next "
            f"run): {exc.message}"
        ]
    except YardError as exc:
        _put(platform, key, {**pending, "state": "failed", "error": exc.message})
        platform.audit(ctx, "monitor.retrain", resource, "error", {**detail, "error": exc.message})
        return [f"retrained {spec} passed its gates but could not be deployed: {exc.message}"]
    _put(platform, key, {**pending, "state": "deployed"})
    platform.audit(ctx, "monitor.retrain", resource, "ok", detail)
    return [f"retrained {spec} passed its gates and is a {policy.retrain.canary_weight}% canary"]
