"""The training loop end to end: `yard train`, exact resume after SIGKILL, DDP on gloo, checkpoints, bad
recipes.

Every run here is real: a seeded T5 with a few thousand parameters, a SentencePiece vocabulary trained on the
generated normalisation data, and the real tracking store. Subprocesses where exit codes, signals or torchrun
are the point."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from _tiny import write_recipe  # tests/training/_tiny.py
from safetensors.torch import load_file

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.testing import Yard
from modelyard.tracking import Client

pytestmark = pytest.mark.slow


@pytest.fixture
def data_home(yard: Yard, home: Path, tmp_path: Path) -> Path:
    """An initialised home holding norm@1 (train/validation/test files of the generated task)."""
    assert yard("init").code == 0
    r = yard("examples", "make-data", tmp_path / "norm", "--rows", "300", "--seed", "1", "--version", "norm")
    assert r.code == 0, r.err
    return home


def yard_proc(home: Path, *args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env.update(YARD_HOME=str(home), OMP_NUM_THREADS="1", NO_COLOR="1")
    return subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def ckpt_root(home: Path, run_id: str) -> Path:
    return home / "checkpoints" / run_id


def client_of(home: Path) -> Client:
    return Client(Platform(load_settings(home=home)))


def only_run(home: Path) -> str:
    with client_of(home) as c:
        runs = c.search_runs("t")
    assert len(runs) == 1
    return runs[0].id


def killed_run(home: Path, recipe: Path, after_step: int) -> str:
    """Start `yard train` and SIGKILL it once the checkpoint of ``after_step`` is complete."""
    proc = yard_proc(home, "train", str(recipe), "--no-progress")
    deadline = time.monotonic() + 240
    while not list((home / "checkpoints").glob(f"*/step-{after_step:08d}/manifest.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return only_run(home)


def newest(root: Path) -> Path:
    return max(p.parent for p in root.glob("step-*/manifest.json"))


# -- a whole run ------------------------------------------------------------------------------------------


def test_train_records_everything(yard: Yard, data_home: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml")
    r = yard("train", recipe, "--no-progress", "--json")
    assert r.code == 0, r.err
    result = r.json()
    assert result["steps"] == 12 and not result["stopped_early"]
    assert set(result["metrics"]) == {"bleu", "rougeL", "exact_match"}
    with Client() as c:
        info = c.get_run(result["run_id"])
        assert info.status == "FINISHED"
        assert info.params["hyperparameters.lr"] == "0.003" and info.params["run.world_size"] == "1"
        history = c.metric_history(info.id, ["loss", "lr", "tokens_per_s", "val_loss", "val_rougeL"])
        assert [p.step for p in history["loss"]] == list(range(1, 13))
        assert [p.step for p in history["val_loss"]] == [6, 12]
        assert all(p.value > 0 for p in history["tokens_per_s"])
        names = {name for name, _, _ in c.list_artifacts(info.id)}
    assert {"model/model.safetensors", "model/manifest.json", "recipe.yaml", "eval/report.json"} <= names
    assert any(n.startswith("model/tokenizer") or n.endswith("spiece.model") for n in names)
    # its checkpoints (plain files, for resume only) are deleted once the model is stored, encrypted
    assert not ckpt_root(data_home, info.id).exists()
    # lineage: the run read norm@1
    shown = yard("lineage", "show", f"run:{info.id}")
    assert shown.code == 0 and "norm@1" in shown.out


def test_early_stopping_and_dataloader_workers(yard: Yard, data_home: Path, tmp_path: Path) -> None:
    """A min_delta no evaluation can beat stops after `patience` evaluations; batches come from 2 workers."""
    recipe = write_recipe(
        tmp_path / "r.yaml",
        hyperparameters__max_steps=40,
        train__eval_every_steps=2,
        train__early_stopping={"metric": "loss", "patience": 2, "min_delta": 100.0},
        checkpoints__every_steps=None,
        distributed__dataloader_workers=2,
    )
    r = yard("train", recipe, "--no-progress", "--json")
    assert r.code == 0, r.err
    result = r.json()
    # the first evaluation sets the reference, the next two fail to improve it by 100
    assert result["stopped_early"] and result["steps"] == 6
    with Client() as c:
        info = c.get_run(result["run_id"])
        assert info.tags["stopped_early"] == "true"
        assert [p.step for p in c.metric_history(info.id, ["val_loss"])["val_loss"]] == [2, 4, 6]


def test_bf16_autocast_path_on_cpu(yard: Yard, data_home: Path, tmp_path: Path) -> None:
    """The mixed-precision path of a GPU run (autocast, fp32 loss), exercised with CPU bf16 autocast."""
    recipe = write_recipe(
        tmp_path / "r.yaml", precision="bf16", hyperparameters__max_steps=4, train__eval_every_steps=None
    )
    r = yard("train", recipe, "--json")  # with progress, on a stderr that is not a terminal (a job's log)
    assert r.code == 0, r.err
    with Client() as c:
        info = c.get_run(r.json()["run_id"])
        losses = [p.value for p in c.metric_history(info.id, ["loss"])["loss"]]
    assert info.params["run.precision"] == "bf16"
    assert len(losses) == 4 and all(0 < v < 20 for v in losses)
    # One plain line per log step instead of a bar Rich would not draw there.
    lines = [line for line in r.err.splitlines() if line.startswith("training: step ")]
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"], r.err
    assert f"loss {losses[-1]:.4f}" in lines[-1]


# -- exact resume -----------------------------------------------------------------------------------------


def test_sigkill_then_resume_gives_identical_weights(data_home: Path, tmp_path: Path) -> None:
    # A log every 4 steps, a checkpoint every 3: each checkpoint falls between two logs.
    recipe = write_recipe(
        tmp_path / "r.yaml",
        hyperparameters__max_steps=15,
        train__eval_every_steps=5,
        train__log_every_steps=4,
        checkpoints__keep_best=False,  # the model artifact is the last step's weights
    )
    # The uninterrupted run goes into a copy of the home, so each home has one run of experiment t.
    home_b = tmp_path / "home-b"
    subprocess.run(["cp", "-a", str(data_home), str(home_b)], check=True)
    straight = yard_proc(home_b, "train", str(recipe), "--no-progress")
    kill_after = random.Random().choice([3, 6, 9])
    run_id = killed_run(data_home, recipe, kill_after)
    code, _, err = finish(straight)
    assert code == 0, err
    with client_of(data_home) as c:
        assert c.get_run(run_id).status == "RUNNING"  # its heartbeat is still fresh
    code, _, err = finish(yard_proc(data_home, "train", str(recipe), "--resume", run_id[:8], "--no-progress"))
    assert code == 0, err
    # The final models (a FINISHED run's checkpoints are deleted once its model is stored).
    with client_of(data_home) as c:
        resumed = load_file(c.download_artifacts(run_id, "model", tmp_path / "a") / "model.safetensors")
    with client_of(home_b) as c:
        straight_id = only_run(home_b)
        uninterrupted = load_file(
            c.download_artifacts(straight_id, "model", tmp_path / "b") / "model.safetensors"
        )
    assert not ckpt_root(data_home, run_id).exists() and not ckpt_root(home_b, straight_id).exists()
    # Tensor by tensor, bit for bit. (Not the file bytes: safetensors writes its header's metadata, the
    # names of T5's tied tensors, in a per-process hash order.)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in resumed.items():
        assert torch.equal(tensor, uninterrupted[name]), f"{name} differs after a kill past step {kill_after}"
    with client_of(data_home) as c:
        assert c.get_run(run_id).status == "FINISHED"
        # every logged step's loss, those before the kill included: a checkpoint makes its steps' metrics
        # durable first, since the resume starts after them (helper-21: steps logged just before were
        # lost); and the same losses: the window of steps since the last log is checkpointed with them
        resumed_losses = {p.step: p.value for p in c.metric_history(run_id, ["loss"])["loss"]}
    with client_of(home_b) as c:
        straight_losses = {p.step: p.value for p in c.metric_history(only_run(home_b), ["loss"])["loss"]}
    assert sorted(straight_losses) == [4, 8, 12, 15]
    assert resumed_losses == straight_losses, f"killed past step {kill_after}"


def test_a_run_still_training_elsewhere_is_not_resumed_beside_it(
    yard: Yard, data_home: Path, tmp_path: Path
) -> None:
    # Two processes on one run would write and prune the same checkpoints (helper-21).
    import textwrap

    recipe = write_recipe(tmp_path / "r.yaml", train__eval_every_steps=None)
    run_id = killed_run(data_home, recipe, 3)
    lock = ckpt_root(data_home, run_id) / ".training.lock"
    holder = subprocess.Popen(  # what a live `yard train` of that run holds
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, os, time
                fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                print("held", flush=True)
                time.sleep(120)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = yard("train", recipe, "--resume", run_id[:8], "--no-progress")
        assert r.code == 2 and "is being trained by another process" in r.error
    finally:
        holder.kill()
        holder.wait()
    # the vocabulary the checkpoints were trained with is checked too (it was read back unverified)
    tokenizer = ckpt_root(data_home, run_id) / "tokenizer" / "tokenizer.json"
    original = tokenizer.read_bytes()
    tokenizer.write_bytes(original.replace(b'"normalise"', b'"normalize"', 1) + b" ")
    r = yard("train", recipe, "--resume", run_id[:8], "--no-progress")
    assert r.code == 1 and "tokenizer.json changed since the run trained its tokenizer" in r.error
    tokenizer.write_bytes(original)
    r = yard("train", recipe, "--resume", run_id[:8], "--no-progress")  # its holder gone: it resumes
    assert r.code == 0, r.err


def test_tampered_checkpoint_is_refused_and_a_half_written_one_skipped(
    yard: Yard, data_home: Path, tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", train__eval_every_steps=None)
    run_id = killed_run(data_home, recipe, 3)
    root = ckpt_root(data_home, run_id)
    last = newest(root)
    # flip one byte of the newest complete checkpoint: resuming from it is refused, nothing changes
    weights = last / "model.safetensors"
    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    r = yard("train", recipe, "--resume", "latest", "--no-progress")
    assert r.code == 1
    assert "model.safetensors does not match its SHA-256" in r.error
    assert newest(root) == last
    # put it back, and leave a half-written later checkpoint (a crash while saving): it is skipped
    weights.write_bytes(original)
    half = root / "step-00000011"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint"):
        r = yard("train", recipe, "--resume", "latest", "--no-progress", "--json")
    assert r.code == 0, r.err
    assert r.json()["run_id"] == run_id and r.json()["steps"] == 12
    assert not root.exists()  # FINISHED: its checkpoints are deleted


def test_resume_with_another_recipe_is_refused(yard: Yard, data_home: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", hyperparameters__max_steps=3, train__eval_every_steps=None)
    assert yard("train", recipe, "--no-progress").code == 0
    run_id = only_run(data_home)
    r = yard("train", recipe, "--resume", run_id, "--set", "hyperparameters.lr=0.1", "--no-progress")
    assert r.code == 2 and "different recipe (hyperparameters.lr)" in r.error


# -- distributed ------------------------------------------------------------------------------------------


def test_two_process_ddp_matches_one_process(data_home: Path, tmp_path: Path) -> None:
    """Same global batch, no dropout: the loss curve of 2 gloo processes equals 1 process's."""
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model__config={"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2, "dropout_rate": 0.0},
        hyperparameters__max_steps=8,
        train__eval_every_steps=None,
        checkpoints__every_steps=4,
    )
    code, _, err = finish(yard_proc(data_home, "train", str(recipe), "--no-progress", "--name", "one"))
    assert code == 0, err
    code, _, err = finish(
        yard_proc(data_home, "train", str(recipe), "--nproc", "2", "--no-progress", "--name", "two")
    )
    assert code == 0, err
    with client_of(data_home) as c:
        runs = {r.name: r for r in c.search_runs("t")}
        assert set(runs) == {"one", "two"}  # rank 1 created no run
        assert runs["two"].params["run.world_size"] == "2"
        one = [p.value for p in c.metric_history(runs["one"].id, ["loss"])["loss"]]
        two = [p.value for p in c.metric_history(runs["two"].id, ["loss"])["loss"]]
    assert len(one) == len(two) == 8
    assert two == pytest.approx(one, rel=1e-4)
    assert one[-1] < one[0]


# -- bad recipes fail before any work ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hyperparameters__lr": -1.0}, "hyperparameters.lr"),
        ({"hyperparameters__batch_sise": 8}, "batch_sise"),
        ({"hyperparameters__max_steps": "many"}, "hyperparameters.max_steps"),
        ({"data__train": "nope@3"}, "nope@3"),
    ],
)
def test_bad_recipes_fail_before_any_work(
    yard: Yard, data_home: Path, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", **changes)
    r = yard("train", recipe, "--no-progress")
    assert r.code in (1, 2) and message in r.error
    with Client() as c:
        assert c.search_runs("t") == []
    assert not (data_home / "checkpoints").exists()


def test_every_optimizer_step_sums_exactly_gradient_accumulation_micro_batches(
    data_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 240 rows in batches of 7 are 34 micro-batches an epoch; with accumulation 4 that is 8 steps and 2
    # left over, which used to be added into the next epoch's first step (helper-21).
    from modelyard.training import _train, load_recipe

    per_step: list[int] = []
    seen = [0]
    token_losses, optimizer_step = _train._token_losses, _train._optimizer_step

    def counting_losses(setup: Any, model: Any, batch: Any, hook: Any = None) -> Any:
        if model is setup.model and model.training:
            seen[0] += 1
        return token_losses(setup, model, batch, hook)

    def counting_step(setup: Any) -> None:
        per_step.append(seen[0])
        seen[0] = 0
        optimizer_step(setup)

    monkeypatch.setattr(_train, "_token_losses", counting_losses)
    monkeypatch.setattr(_train, "_optimizer_step", counting_step)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        hyperparameters__max_steps=None,
        hyperparameters__epochs=2,
        hyperparameters__batch_size=7,
        hyperparameters__gradient_accumulation=4,
        checkpoints__every_steps=None,
        train__eval_every_steps=None,
    )
    with client_of(data_home) as c:
        _train.train(load_recipe(recipe), client=c, progress=False, final_eval=False)
    assert per_step == [4] * 16


def test_keep_best_keeps_a_best_evaluation_that_falls_between_checkpoints(
    data_home: Path, tmp_path: Path
) -> None:
    # Evaluations every 4 steps, checkpoints only at the end: the best evaluation had no checkpoint, so the
    # final model was silently the last step's, not the best one's.
    from modelyard.training import _train, load_recipe

    recipe = write_recipe(
        tmp_path / "r.yaml",
        train__eval_every_steps=4,
        checkpoints={"every_steps": None, "keep_last": 1, "metric": "loss", "mode": "max"},  # the worst loss
    )
    # The weights at each evaluation (taken at its step, as its checkpoint is): the checkpoints themselves
    # are deleted once the run is FINISHED.
    core: list[Any] = []
    at_eval: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(step: int, metrics: dict[str, float]) -> None:
        at_eval[step] = {k: v.detach().clone() for k, v in core[0].state_dict().items()}

    hooks = _train.TrainHooks(model=core.append)
    with client_of(data_home) as c:
        result = _train.train(
            load_recipe(recipe), client=c, progress=False, final_eval=False, on_eval=snapshot, hooks=hooks
        )
        info = c.get_run(result.run_id)
        val = {p.step: p.value for p in c.metric_history(info.id, ["val_loss"])["val_loss"]}
        model = c.download_artifacts(info.id, "model", tmp_path / "model")
    best = max(val, key=lambda s: val[s])
    assert best < 12 and result.best["step"] == best  # the loss went down: the worst is an early one
    assert info.tags["model_step"] == str(best)
    assert not ckpt_root(data_home, result.run_id).exists()
    saved = load_file(model / "model.safetensors")
    kept = at_eval[best]
    common = saved.keys() & kept.keys()  # the tied embedding is stored under one name or the other
    assert len(common) > 10 and all(torch.equal(saved[k], kept[k]) for k in common)


def test_periodic_evaluation_without_validation_rows_is_refused_before_training(
    yard: Yard, data_home: Path, tmp_path: Path
) -> None:
    # It used to train up to the first evaluation and fail with "nothing to score" (helper-21).
    recipe = write_recipe(tmp_path / "r.yaml", data={"train": "norm@1", "test": "norm@1"})
    r = yard("train", recipe, "--no-progress")
    assert r.code == 2 and "validation split, which is empty" in r.error
    assert not list((data_home / "checkpoints").glob("*/step-*"))


def test_a_batch_larger_than_the_data_is_refused_before_the_tokenizer_is_trained(
    yard: Yard, data_home: Path, tmp_path: Path
) -> None:
    # It was found only after the SentencePiece vocabulary was trained (minutes on a large corpus).
    recipe = write_recipe(
        tmp_path / "r.yaml", hyperparameters__batch_size=100, hyperparameters__gradient_accumulation=4
    )
    r = yard("train", recipe, "--no-progress")
    assert r.code == 2 and "fewer than one optimizer step" in r.error
    assert not list((data_home / "checkpoints").glob("*/tokenizer"))


def test_resuming_on_another_kind_of_device_is_refused_before_any_work(
    data_home: Path, tmp_path: Path
) -> None:
    # A run trained on a GPU, resumed on a CPU: the run's params are immutable, so it failed only at the
    # end of the setup (data read, tokenizer trained, checkpoint loaded) with "param 'run.device' of run
    # ... already has a different value".
    from modelyard.errors import UsageError
    from modelyard.training import _train, load_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml"))
    with client_of(data_home) as c:
        run = c.start_run("t", params={**recipe.params(), "run.device": "cuda", "run.precision": "bf16"})
        run.end("FAILED", "the GPU node went away")
        with pytest.raises(UsageError, match=r"trained on cuda.*resume it on cuda"):
            _train.train(recipe, client=c, resume=run.id, device="cpu", progress=False)
    assert not (ckpt_root(data_home, run.id) / "tokenizer").exists()
    # The same device kind, but auto resolved otherwise there (bf16 on an A100, fp32 here).
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", precision="auto"))
    with client_of(data_home) as c:
        run = c.start_run("t", params={**recipe.params(), "run.device": "cpu", "run.precision": "bf16"})
        run.end("FAILED", "killed")
        with pytest.raises(UsageError, match=r"trained in bf16, which precision: auto resolves to fp32"):
            _train.train(recipe, client=c, resume=run.id, device="cpu", progress=False)


def test_an_infinite_loss_is_logged_as_nan_and_training_goes_on(data_home: Path, tmp_path: Path) -> None:
    # An overflowing step (fp16: the gradient scaler skips it) has an infinite loss, which the tracking store
    # refuses: log_metrics raised and the run FAILED. A constant inf leaves the gradients finite.
    import torch.nn.functional as F

    from modelyard.training import _train, load_recipe

    calls = [0]

    def loss(logits: Any, batch: dict[str, Any]) -> Any:
        calls[0] += 1
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), reduction="sum"
        )
        return ce + float("inf") if calls[0] == 3 else ce

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", hyperparameters__max_steps=4))
    with client_of(data_home) as c:
        result = _train.train(
            recipe, client=c, progress=False, final_eval=False, hooks=_train.TrainHooks(loss=loss)
        )
        info = c.get_run(result.run_id)
        losses = {p.step: p.value for p in c.metric_history(info.id, ["loss"])["loss"]}
    assert info.status == "FINISHED" and sorted(losses) == [1, 2, 3, 4]
    assert losses[3] is None or math.isnan(losses[3])  # NaN is stored as a gap
    assert all(math.isfinite(losses[s]) for s in (1, 2, 4))


def test_batch_size_must_split_across_processes(yard: Yard, data_home: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", hyperparameters__batch_size=7)
    r = yard("train", recipe, "--no-progress", env={"WORLD_SIZE": "2", "RANK": "1"})
    assert r.code == 2 and "divisible by the number of processes (2)" in r.error


def test_a_rank_in_a_session_of_its_own_dies_with_its_launcher(tmp_path: Path) -> None:
    # torchrun starts ranks with start_new_session=True: a SIGKILLed launcher (a dead worker, a memory kill
    # of the job's process group) would leave them training beside the job's retry (helper-21).
    import textwrap

    import psutil

    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        textwrap.dedent(
            """
            import subprocess, sys, time
            rank = subprocess.Popen(
                [sys.executable, "-c", "from modelyard.training._dist import die_with_parent; "
                 "die_with_parent(); print('armed', flush=True); import time; time.sleep(120)"],
                start_new_session=True, stdout=subprocess.PIPE, text=True,
            )
            assert rank.stdout.readline().strip() == "armed"
            print(rank.pid, flush=True)
            time.sleep(120)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(launcher)], stdout=subprocess.PIPE, text=True)
    rank = int(proc.stdout.readline())  # type: ignore[union-attr]
    assert psutil.pid_exists(rank)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(rank).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        os.kill(rank, signal.SIGKILL)
        raise AssertionError("the rank outlived its launcher")


def test_checkpoint_directories_are_private_under_a_permissive_umask(tmp_path: Path) -> None:
    """$YARD_HOME/checkpoints was 0777 under `umask 000` (only the run's folder got 0700, and not always):
    anyone could plant a step directory that `--resume` would load."""
    from modelyard.training import _train

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    old = os.umask(0)
    try:
        _train._hold_run(home / "checkpoints" / "r1", "r1")
    finally:
        os.umask(old)
        _train._release_run("r1")
    for path in (home / "checkpoints", home / "checkpoints" / "r1"):
        assert path.stat().st_mode & 0o777 == 0o700, path


def test_a_run_without_test_or_validation_rows_says_why_it_has_no_final_evaluation(
    data_home: Path, tmp_path: Path
) -> None:
    # The final evaluation was skipped without a word, so a run had no BLEU/ROUGE and no eval/ report and
    # nothing said why.
    from modelyard.training import _train, load_recipe

    recipe = load_recipe(
        write_recipe(
            tmp_path / "r.yaml",
            data={"train": "norm@1"},
            train__eval_every_steps=None,
            hyperparameters__max_steps=2,
        )
    )
    with client_of(data_home) as c:
        with pytest.warns(UserWarning, match="no test or validation split: the final evaluation"):
            result = _train.train(recipe, client=c, progress=False)
        info = c.get_run(result.run_id)
        names = {name for name, _, _ in c.list_artifacts(info.id)}
    assert info.status == "FINISHED" and result.metrics == {}
    assert info.tags["final_eval"] == "skipped: no test or validation split"
    assert "model/model.safetensors" in names and not any(n.startswith("eval/") for n in names)


def _runs(c: Client, n: int, status: str, *, checkpoint: bool = False) -> list[str]:
    ids = []
    for _ in range(n):
        run = c.start_run("t")
        run.end(status)
        if checkpoint:
            step = ckpt_root(c.platform.settings.home, run.id) / "step-00000003"
            step.mkdir(parents=True)
            (step / "manifest.json").write_text("{}")
        ids.append(run.id)
    return ids


def test_resume_latest_finds_the_newest_resumable_run_behind_many_newer_runs(
    any_platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the 200 newest runs of the experiment were looked at: a killed run followed by 200 finished
    # ones (a sweep, say) was "no run ... has a checkpoint to resume".
    from modelyard.training import _train

    with Client(any_platform) as c:
        _runs(c, 1, "KILLED", checkpoint=True)
        (wanted,) = _runs(c, 1, "KILLED", checkpoint=True)
        _runs(c, 201, "FINISHED")
        assert _train._resolve_resume(c, "t", "latest") == wanted
        # Unfinished runs without a checkpoint are read a page at a time, however many there are.
        monkeypatch.setattr(_train, "_RESUME_PAGE", 2)
        _runs(c, 5, "FAILED")
        assert _train._resolve_resume(c, "t", "latest") == wanted
