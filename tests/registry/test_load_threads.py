"""A thread count given to one load is not left behind for the next: ``load_dir(threads=None)`` runs on the
process's own default, not on whatever the last load with a count set (torch's count is process-wide)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelyard import registry
from modelyard.core import Platform
from modelyard.evaluation import check_gates, parse_policy
from modelyard.registry import load_dir

pytest.importorskip("torch")
pytest.importorskip("transformers")

SCRIPT = """
import sys, torch
from modelyard.registry import load_dir
torch.set_num_threads(3)  # the process's default, whatever the machine has
load_dir(sys.argv[1], threads=1)
after_one = torch.get_num_threads()
load_dir(sys.argv[1])
after_default = torch.get_num_threads()
load_dir(sys.argv[1], threads=2)
print(after_one, after_default, torch.get_num_threads())
"""


def test_a_load_without_threads_gets_the_process_default_back(model_dir: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(model_dir)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "3", "2"]


def test_a_gate_times_its_version_on_the_policys_threads_after_loading_a_reference(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    import torch

    p = trained_platform
    torch.set_num_threads(3)
    load_dir(model_dir)  # the process default (3, unless an earlier load in this process fixed another)
    if torch.get_num_threads() == 1:
        pytest.skip("this process's default is 1 thread: nothing to tell apart")
    staged = registry.register(p, p.context(), model_dir, name)
    registry.set_alias(p, p.context(), staged.spec, "staging")
    info = registry.register(p, p.context(), model_dir, name)
    policy = parse_policy(
        {
            "data": {"dataset": "norm@1", "file": "test.jsonl", "max_samples": 5},
            "decoding": {"max_new_tokens": 4},
            "metrics": ["rougeL >= staging - 1"],  # loads staging after the version under test
            "latency": {"p95_ms": 1e6, "samples": 5, "warmup": 0, "threads": 1},
        }
    )
    check_gates(p, p.context(), info.spec, policy, attest=False)
    assert torch.get_num_threads() == 1  # what the latency was measured on: nothing set it since
