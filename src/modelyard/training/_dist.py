"""Step 5's process plumbing: who this process is in a torchrun job, the process group, and the launcher.

``yard train --nproc N`` re-executes itself through ``torch.distributed.run`` (torchrun); each child sees
RANK / WORLD_SIZE / LOCAL_RANK and joins a process group (NCCL on GPUs, gloo on CPU). Without those variables
the loop runs as a single process with no process group at all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.errors import UsageError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_env() -> Dist:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world}")
    return Dist(rank, world, local)


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel (Linux) to SIGKILL this process when its parent dies, and exit at once if it already
    has. torchrun starts each rank in a session of its own, so a rank would outlive a killed launcher (a
    dead worker, a memory kill of the job's process group) and train beside the job's retry. ``parent``:
    the pid expected as parent (default: the current one)."""
    import ctypes
    import signal

    expected = os.getppid() if parent is None else parent
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: nothing to arm
        return
    if os.getppid() != expected:  # the parent died before the signal was armed
        os._exit(137)


def pick_device(requested: str, dist: Dist) -> Any:
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu")
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    if requested != "cpu":
        raise UsageError(f"--device must be auto, cpu or cuda, not {requested!r}")
    return torch.device("cpu")


def init_group(dist: Dist, backend: str, device: Any) -> None:
    if not dist.enabled:
        return
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank torchrun started: it dies with its launcher
        die_with_parent()
    import datetime

    import torch.distributed as td

    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UsageError("distributed.backend nccl needs CUDA devices; use gloo (or auto) on CPU")
    if backend == "nccl":
        # pick_device shares GPUs out round-robin; NCCL refuses two ranks on one GPU, but only at the first
        # collective, after rank 0 has read the data and trained the tokenizer.
        import torch

        local_env = os.environ.get("LOCAL_WORLD_SIZE", "1")  # set by torchrun
        local = int(local_env) if local_env.isdigit() else 1
        gpus = torch.cuda.device_count()
        if local > gpus:
            raise UsageError(
                f"{local} processes on this node but {gpus} GPUs: NCCL needs a GPU of its own for each "
                f"process; use --nproc {gpus} (or distributed.backend: gloo)"
            )
    if not td.is_initialized():
        td.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


def close_group(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


def broadcast(dist: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (in-memory objects between our own processes, never from files)."""
    if not dist.enabled:
        return obj
    import torch.distributed as td

    box = [obj if dist.main else None]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather(dist: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (on every rank)."""
    if not dist.enabled:
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * dist.world
    td.all_gather_object(out, obj)
    return out


def all_sum(dist: Dist, values: list[float]) -> list[float]:
    if not dist.enabled:
        return values
    import torch
    import torch.distributed as td

    t = torch.tensor(values, dtype=torch.float64)
    if td.get_backend() == "nccl":
        t = t.cuda()
    td.all_reduce(t)
    return [float(v) for v in t.cpu().tolist()]


def barrier(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        td.barrier()


def torchrun_argv(
    args: Sequence[str],
    *,
    nproc: int,
    nnodes: str = "1",
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
    rdzv_backend: str = "c10d",
) -> list[str]:
    """The command that runs ``yard <args>`` under torchrun with ``nproc`` processes on this node."""
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if nnodes == "1" and rdzv_endpoint is None:
        cmd.append("--standalone")  # a free local port, no rendezvous server to run
    else:
        if rdzv_endpoint is None:
            raise UsageError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
        cmd += [f"--rdzv-backend={rdzv_backend}", f"--rdzv-endpoint={rdzv_endpoint}"]
        cmd.append(f"--rdzv-id={rdzv_id or 'modelyard'}")
        if node_rank is not None:
            cmd.append(f"--node-rank={node_rank}")
    return [*cmd, "-m", "modelyard.cli", *args]
