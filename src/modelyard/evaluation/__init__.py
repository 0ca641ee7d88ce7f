"""Evaluation beyond the training loop's metrics: quality gates (metric thresholds, fairness across
slices, robustness to perturbed inputs, latency and size budgets) with signed results."""

from modelyard.evaluation._gates import Check, GateReport, check_gates, eval_examples, gate_runner
from modelyard.evaluation._perturb import PERTURBATIONS, perturb
from modelyard.evaluation._policy import EvalData, GatePolicy, MetricCheck, load_policy, parse_policy
from modelyard.evaluation._speed import latency_ms, throughput

__all__ = [
    "PERTURBATIONS",
    "Check",
    "EvalData",
    "GatePolicy",
    "GateReport",
    "MetricCheck",
    "check_gates",
    "eval_examples",
    "gate_runner",
    "latency_ms",
    "load_policy",
    "parse_policy",
    "perturb",
    "throughput",
]
