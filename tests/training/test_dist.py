"""Step 5's process plumbing that a CPU machine can check: the torchrun environment and the choice of the
process group's backend. (The gloo path itself runs in test_train's two-process test.)"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from modelyard.errors import UsageError  # noqa: E402
from modelyard.training import _dist  # noqa: E402


def test_nccl_with_more_processes_than_gpus_on_the_node_is_refused_before_the_group_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two ranks on one GPU failed only at NCCL's first collective ("Duplicate GPU detected"), which comes
    # after rank 0 has read the data and trained the tokenizer.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    dist = _dist.Dist(rank=3, world=4, local_rank=3)
    for backend in ("auto", "nccl"):
        with pytest.raises(UsageError, match=r"4 processes on this node but 2 GPUs.*--nproc 2"):
            _dist.init_group(dist, backend, torch.device("cuda", 1))


def test_a_bad_torchrun_environment_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UsageError, match="RANK=2 WORLD_SIZE=2"):
        _dist.from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match="must be integers"):
        _dist.from_env()
