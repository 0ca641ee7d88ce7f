"""``yard train`` and ``yard tune``: run a recipe, alone, under torchrun, or as an Optuna study."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from modelyard.cli._app import acting, app, console, print_json, state, table
from modelyard.errors import UsageError

if TYPE_CHECKING:
    from modelyard.training import Recipe


def parse_sets(values: list[str]) -> dict[str, Any]:
    """``--set section.key=value`` pairs; values are YAML scalars (``3e-4``, ``true``, ``[1, 2]``), read by
    the recipe's own loader, so ``1e-3`` is a number here as it is in the recipe file."""
    from modelyard.errors import ValidationError
    from modelyard.training._recipe import parse_yaml

    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes section.key=value, got {item!r}")
        try:
            out[key.strip()] = parse_yaml(raw, source=f"--set {key}") if raw.strip() else ""
        except ValidationError:
            raise UsageError(f"--set {key}: {raw!r} is not a YAML value") from None
    return out


def read_recipe(path: Path, sets: list[str]) -> tuple[Recipe, str]:
    """The validated recipe with ``--set`` overrides applied, and the text to store with the run."""
    import yaml

    from modelyard.training import load_recipe

    recipe = load_recipe(path)
    overrides = parse_sets(sets)
    if overrides:
        recipe = recipe.with_overrides(overrides)
        data = recipe.model_dump(mode="json", by_alias=True, exclude_unset=True)
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = path.read_text(encoding="utf-8")
    return recipe, text


@app.command("train")
def train_cmd(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML file."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this node (torchrun, DDP)."),
    nnodes: str = typer.Option("1", "--nnodes", help="Nodes (or MIN:MAX) for a multi-node job."),
    node_rank: int | None = typer.Option(None, "--node-rank", help="This node's rank (multi-node)."),
    rdzv_endpoint: str | None = typer.Option(None, "--rdzv", "--rdzv-endpoint", help="HOST:PORT rendezvous."),
    rdzv_id: str | None = typer.Option(None, "--rdzv-id", help="Job id shared by the nodes."),
    resume: str | None = typer.Option(None, "--resume", help="Continue RUN (id or prefix) or 'latest'."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    sets: list[str] = typer.Option([], "--set", help="Override a recipe value: section.key=value."),
    name: str | None = typer.Option(None, "--name", help="Run name."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a recipe: data, tokenizer, model, loop with periodic validation and checkpoints, evaluation."""
    recipe, text = read_recipe(recipe_path, sets)
    launching = (nproc > 1 or nnodes != "1") and "WORLD_SIZE" not in os.environ
    with acting() as (platform, ctx):
        from modelyard.training import check_data, check_pretrained

        check_data(platform, ctx, recipe)  # missing versions fail before any process starts
        check_pretrained(recipe)  # and so does an unloadable local model.pretrained
        if launching:
            launcher = {
                "nproc": nproc,
                "nnodes": nnodes,
                "node_rank": node_rank,
                "rdzv_endpoint": rdzv_endpoint,
                "rdzv_id": rdzv_id,
            }
            code = _launch(
                recipe_path,
                launcher,
                resume=resume,
                device=device,
                sets=sets,
                name=name,
                no_progress=no_progress,
            )
            raise typer.Exit(code)
        import transformers

        from modelyard.tracking import Client
        from modelyard.training._train import train

        hf_logging: Any = transformers.utils.logging
        hf_logging.disable_progress_bar()  # ours is the one progress bar

        rank0 = int(os.environ.get("RANK", "0")) == 0
        client = Client(platform, project=state().project) if rank0 else None
        try:
            result = train(
                recipe,
                client=client,
                recipe_text=text,
                resume=resume,
                device=device,
                run_name=name,
                progress=not no_progress and rank0,
            )
        finally:
            if client is not None:
                client.close()
    if not rank0:
        return
    if as_json:
        print_json(
            {
                "run_id": result.run_id,
                "steps": result.steps,
                "stopped_early": result.stopped_early,
                "best": result.best,
                "metrics": result.metrics,
                "baseline": result.baseline,
            }
        )
        return
    console.print(f"run {result.run_id} finished after {result.steps} steps", markup=False)
    if result.metrics:
        keys = sorted(result.metrics)
        table(
            "evaluation (test split)",
            ["", *keys],
            [
                ["model", *(f"{result.metrics[k]:.4f}" for k in keys)],
                ["copy baseline", *(f"{result.baseline.get(k, float('nan')):.4f}" for k in keys)],
            ],
        )


def _launch(
    recipe_path: Path,
    launcher: dict[str, Any],
    *,
    resume: str | None,
    device: str,
    sets: list[str],
    name: str | None,
    no_progress: bool,
) -> int:
    """Re-run ``yard train`` under torchrun; the children get the same options minus the launcher's."""
    from modelyard.training._dist import die_with_parent, torchrun_argv

    args = ["train", str(recipe_path.resolve()), "--device", device]
    for item in sets:
        args += ["--set", item]
    if resume is not None:
        args += ["--resume", resume]
    if name is not None:
        args += ["--name", name]
    if no_progress:
        args.append("--no-progress")
    env = dict(os.environ)
    if state().project:
        env["YARD_PROJECT"] = state().project or ""
    me = os.getpid()
    # torchrun dies with this process (killed by a dying worker or a memory limit), and its ranks with it
    return subprocess.call(torchrun_argv(args, **launcher), env=env, preexec_fn=lambda: die_with_parent(me))


@app.command("tune")
def tune_cmd(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="Recipe YAML with a search: section."),
    trials: int = typer.Option(20, "--trials", "-n", help="Trials in all (every worker's together)."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe, random or grid."),
    pruner: str = typer.Option("median", "--pruner", help="median, hyperband or none."),
    study: str | None = typer.Option(None, "--study", help="Study name (default EXPERIMENT-tune)."),
    worker: bool = typer.Option(False, "--worker", help="Join an existing study and run trials for it."),
    resume: bool = typer.Option(
        False, "--resume", help="Take over the study this command started before (e.g. its worker died)."
    ),
    # numpy's range (each trial's sampler is seeded with seed + trials so far, so half of it): past it,
    # the sampler failed with "unexpected ValueError: Seed must be between 0 and 2**32 - 1".
    seed: int | None = typer.Option(None, "--seed", min=0, max=2**31 - 1, help="Sampler seed."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop starting trials after SECONDS."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    sets: list[str] = typer.Option([], "--set", help="Override a recipe value: section.key=value."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Search the recipe's hyperparameter space with Optuna; each trial is a child run."""
    recipe, text = read_recipe(recipe_path, sets)
    with acting() as (platform, ctx):
        import transformers

        from modelyard.tracking import Client
        from modelyard.training import check_data
        from modelyard.training._tune import tune

        check_data(platform, ctx, recipe)
        hf_logging: Any = transformers.utils.logging
        hf_logging.disable_progress_bar()
        with Client(platform, project=state().project) as client:
            result = tune(
                recipe,
                client=client,
                recipe_text=text,
                trials=trials,
                sampler=sampler,
                pruner=pruner,
                study=study,
                worker=worker,
                resume=resume,
                seed=seed,
                device=device,
                timeout=timeout,
            )
    if as_json:
        print_json(result.__dict__)
        return
    console.print(f"study {result.study}: parent run {result.parent_run}", markup=False)
    table(
        "trials",
        ["trial", "state", result.metric, "params", "run"],
        [
            [
                t["number"],
                t["state"],
                "" if t["value"] is None else f"{t['value']:.4f}",
                _params_text(t["params"]),
                (t["run"] or "")[:8],
            ]
            for t in result.trials
        ],
    )
    if result.best_value is not None:
        console.print(
            f"best {result.metric} {result.best_value:.4f} (run {str(result.best_run)[:8]})", markup=False
        )
        if result.default_value is not None:
            console.print(f"the recipe's own values gave {result.default_value:.4f}", markup=False)
    if result.importances:
        table("importance", ["param", "importance"], [[k, f"{v:.3f}"] for k, v in result.importances.items()])


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
