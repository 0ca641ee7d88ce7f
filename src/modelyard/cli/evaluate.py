"""``yard eval RUN|MODEL_DIR --data NAME@V``: score a trained model on a dataset version.

RUN is a run id (or a unique prefix of 6+ characters) whose ``model/`` artifacts (written by the training
loop with ``save_model``) are downloaded, verified and loaded; the run's ``recipe.yaml`` artifact, when
present, gives the default field names, decoding and source length. MODEL_DIR is a local directory written
by ``save_model``. An existing directory wins over a run id of the same spelling.

The result is printed as tables, optionally written to ``--output`` (report.json, report.md), and recorded
as a new run in the experiment ``eval`` (``--experiment`` to change it): lineage from the dataset version,
tags naming the evaluated run or model, the metrics (``bleu``, ``baseline/bleu``, ``slice/<g>/bleu`` ...)
and the report as ``eval/report.json`` and ``eval/report.md``. Evaluations are kept apart from the training
experiments so a search for the best training run by a metric never returns an evaluation.

torch and transformers are imported inside the command: ``yard --help`` stays light.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from modelyard.cli._app import acting, app, console, err_console, print_json, state, table
from modelyard.errors import NotFoundError, UsageError, ValidationError, YardError

if TYPE_CHECKING:
    from modelyard.core import Context, Platform
    from modelyard.training._data import Example, SplitName
    from modelyard.training._eval import EvalReport
    from modelyard.training._recipe import DataSection, EvaluationSection, Recipe

_RUN_ID = re.compile(r"[0-9a-f]{6,32}")
#: where the training loop stores the recipe ("recipe.yaml/recipe.yaml" is what logging the file under the
#: folder "recipe.yaml" gives; both are read)
_RECIPE_PATHS = ("recipe.yaml", "recipe.yaml/recipe.yaml")
_SPLITS = ("train", "validation", "test")
_FLAGS = {
    "file": "--file",
    "source_field": "--source-field",
    "target_field": "--target-field",
    "group_field": "--group-field",
    "num_beams": "--num-beams",
    "decoding": "--decoding",
    "metrics": "--metrics",
    "max_new_tokens": "--max-new-tokens",
    "batch_size": "--batch-size",
}
_FLAG_WORD = re.compile(r"(?<![\w-])(" + "|".join(_FLAGS) + r")\b")


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar on stderr (terminals only) for the generation."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar: Progress | None = None
    task: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar, task
        if not err_console.is_terminal:
            return
        if bar is None:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err_console,
                transient=True,
            )
            bar.start()
            task = bar.add_task(what, total=total)
        bar.update(task, completed=done)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


def _pydantic_problem(exc: Any) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ").replace("decoding: beam", "decoding beam")
        msg = _FLAG_WORD.sub(lambda m: _FLAGS[m[1]], msg)
        parts.append(f"{_FLAGS.get(loc, loc)}: {msg}" if loc else msg)
    return "; ".join(parts)


def _model_from_run(
    platform: Platform, ctx: Context, text: str, tmp: Path
) -> tuple[str, Callable[[], Path], Recipe | None]:
    """(run id, a function that downloads the run's model/ into tmp, the run's recipe or None)."""
    from modelyard.tracking._store import download_artifacts, list_run_artifacts, resolve_run_id
    from modelyard.training._recipe import load_recipe

    run_id = resolve_run_id(platform, ctx, text)
    paths = {p for p, _, _ in list_run_artifacts(platform, ctx, run_id)}
    if "model/manifest.json" not in paths:
        raise NotFoundError(
            f"run {run_id} has no saved model (no model/manifest.json artifact); evaluate a run that "
            "finished training, or give a model directory"
        )
    recipe = None
    found = next((p for p in _RECIPE_PATHS if p in paths), None)
    if found is not None:
        local = download_artifacts(platform, ctx, run_id, found, tmp / "recipe")
        try:
            recipe = load_recipe(local)
        except YardError as exc:
            err_console.print(
                f"warning: the run's recipe.yaml is not usable ({exc.message}); using the defaults",
                markup=False,
            )

    def fetch() -> Path:
        return download_artifacts(platform, ctx, run_id, "model", tmp / "model")

    return run_id, fetch, recipe


def _data_section(
    spec: str, recipe: Recipe | None, file: str | None, fields: dict[str, str | None]
) -> DataSection:
    import pydantic

    from modelyard.training._recipe import DataSection

    base = recipe.data if recipe is not None else None
    ours = base is not None and spec in base.versions().values()
    values: dict[str, Any] = {
        "train": spec,
        "format": base.format if base is not None else "auto",
        "file": file if file is not None else (base.file if ours and base is not None else None),
    }
    for key, default in (("source_field", "source"), ("target_field", "target"), ("group_field", None)):
        given = fields[key]
        value = given if given is not None else (getattr(base, key) if base is not None else default)
        if key == "group_field" and value == "":
            value = None  # --group-field "" turns the recipe's slices off
        values[key] = value
    try:
        return DataSection.model_validate(values)
    except pydantic.ValidationError as exc:
        raise UsageError(_pydantic_problem(exc)) from None


def _examples(
    platform: Platform,
    ctx: Context,
    spec: str,
    split: SplitName,
    data: DataSection,
    recipe: Recipe | None,
    split_named: bool,
) -> tuple[list[Example], str, str]:
    """(examples, member file, how they were chosen)."""
    from modelyard.data import get
    from modelyard.evaluation._gates import check_split
    from modelyard.training._data import read_split

    root = get(spec, platform=platform, ctx=ctx)
    try:
        rows, member, cut = read_split(root, spec, data, split, recipe.data if recipe else None)
    except ValidationError as exc:
        flags = "--source-field / --target-field / --group-field"
        msg = exc.message.replace("data.source_field / data.target_field / data.group_field", flags)
        raise ValidationError(msg, **exc.details) from None
    except UsageError as exc:
        raise UsageError(
            exc.message.replace("data.file", "--file").replace("data.format", "the format")
        ) from None
    try:  # the gates' rule: --split test never scores the training rows of a version holding no test split
        check_split(spec, member, split, data.file, split_named, cut)
    except UsageError as exc:
        message = exc.message.replace("data.split", "--split").replace("data.file", "--file")
        raise UsageError(message) from None
    if cut and recipe is not None:
        # The run cut one version by ratios: these are the same seeded split it trained and tested on.
        how = f"the {split} split of {spec}:{member} cut as the run did (seed {recipe.data.seed})"
        if not rows:
            raise UsageError(f"the run's {split} split of {spec} is empty; choose another --split")
        return rows, member, how
    if not rows:
        raise UsageError(f"{spec}:{member} has no rows to evaluate on")
    return rows, member, f"{spec}:{member}"


def _section(
    recipe: Recipe | None,
    metrics: str | None,
    decoding: str | None,
    num_beams: int | None,
    max_new_tokens: int | None,
    batch_size: int | None,
) -> EvaluationSection:
    import pydantic

    from modelyard.training._eval import check_metrics
    from modelyard.training._recipe import EVAL_METRICS, EvaluationSection

    base = recipe.evaluation if recipe is not None else EvaluationSection()
    names = check_metrics([m.strip() for m in metrics.split(",") if m.strip()]) if metrics else EVAL_METRICS
    if decoding is not None and decoding not in ("greedy", "beam"):
        raise UsageError(f"--decoding must be greedy or beam, not {decoding!r}")
    if decoding is None:
        decoding = base.decoding if num_beams is None else ("beam" if num_beams > 1 else "greedy")
    if num_beams is None and decoding == base.decoding:
        num_beams = base.num_beams
    try:
        return EvaluationSection.model_validate(
            {
                "metrics": list(names),
                "decoding": decoding,
                "num_beams": num_beams,
                "max_new_tokens": max_new_tokens or base.max_new_tokens,
                "batch_size": batch_size or base.batch_size,
            }
        )
    except pydantic.ValidationError as exc:
        raise UsageError(_pydantic_problem(exc)) from None


def _load(model_dir: Path) -> tuple[Any, Any]:
    """The verified model (manifest hashes checked before anything is parsed) and its tokenizer."""
    from modelyard.training._model import load_model, verify_model_dir

    verify_model_dir(model_dir)
    import transformers

    hf_logging: Any = transformers.utils.logging
    hf_logging.disable_progress_bar()  # the CLI shows its own progress; no tqdm bars on stderr
    model = load_model(model_dir)
    AutoTokenizer: Any = transformers.AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{model_dir} holds no usable tokenizer ({exc}); save the model with its tokenizer"
        ) from None
    return model, tokenizer


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device must be auto, cpu or cuda[:N], not {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available")
    return dev


def _write_outputs(report: EvalReport, out: Path) -> None:
    from modelyard.core._paths import temp_prefix

    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("report.json", report.to_json()), ("report.md", report.to_markdown())):
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), dir=out)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, out / name)
    except OSError as exc:
        raise UsageError(f"cannot write the report into {out}: {exc.strerror or exc}") from None


def _record(
    platform: Platform,
    experiment: str,
    name: str,
    report: EvalReport,
    tags: dict[str, str],
    params: dict[str, object],
    spec: str,
) -> str:
    """A new run holding the evaluation: lineage from the data, tags, params, metrics, the report."""
    from modelyard.tracking._client import Client

    with (
        Client(platform=platform, project=state().project) as client,
        client.start_run(experiment, name=name, tags=tags, params=params) as run,
        tempfile.TemporaryDirectory(prefix="yard-eval-report-") as tmp,
    ):
        run.use_dataset(spec)
        run.log_metrics(report.metrics_to_log())
        report.info["eval_run"] = run.id
        (Path(tmp) / "report.json").write_text(report.to_json(), encoding="utf-8")
        (Path(tmp) / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        run.log_artifact(Path(tmp) / "report.json", "eval")
        run.log_artifact(Path(tmp) / "report.md", "eval")
        return run.id


def _print(report: EvalReport) -> None:
    from modelyard.training._eval import format_metric

    base = report.baseline
    rows = []
    for m in report.metrics:
        value = report.overall[m]
        if base is not None:
            b = base.overall[m]
            rows.append([m, format_metric(m, value), format_metric(m, b), f"{value - b:+.4f}"])
        else:
            rows.append([m, format_metric(m, value)])
    columns = ["metric", "model", "copy baseline", "difference"] if base is not None else ["metric", "model"]
    table(f"evaluation ({report.n} examples)", columns, rows)
    if report.slices:
        what = report.info.get("group_field") or "group"
        table(
            f"slices by {what}",
            ["slice", "n", *report.metrics],
            [
                [g, report.model.slice_sizes[g], *(format_metric(m, v[m]) for m in report.metrics)]
                for g, v in report.slices.items()
            ],
        )


@app.command("eval")
def eval_command(
    target: str = typer.Argument(
        ...,
        metavar="RUN|MODEL_DIR",
        help="A run id (or unique prefix) with model/ artifacts, or a model directory.",
    ),
    data: str = typer.Option(..., "--data", "-d", metavar="NAME@V", help="Dataset version to evaluate on."),
    split: str | None = typer.Option(
        None,
        "--split",
        help="train, validation or test (default test): the file of that name when the version has one "
        "per split.",
    ),
    file: str | None = typer.Option(None, "--file", metavar="MEMBER", help="The member file to read."),
    source_field: str | None = typer.Option(
        None, "--source-field", help="Input column (default: recipe, source)."
    ),
    target_field: str | None = typer.Option(
        None, "--target-field", help="Reference column (default: recipe, target)."
    ),
    group_field: str | None = typer.Option(
        None, "--group-field", help="Slice column for per-group metrics (default: the recipe's; '' for none)."
    ),
    decoding: str | None = typer.Option(
        None, "--decoding", help="greedy or beam (default: the recipe's, greedy)."
    ),
    num_beams: int | None = typer.Option(
        None, "--num-beams", min=1, help="Beams for --decoding beam (default 4)."
    ),
    max_new_tokens: int | None = typer.Option(
        None, "--max-new-tokens", min=1, help="Generated tokens at most."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Sources per generation batch."),
    max_source_length: int | None = typer.Option(
        None, "--max-source-length", min=1, help="Source tokens kept (default: the recipe's, 512)."
    ),
    max_samples: int | None = typer.Option(
        None, "--max-samples", min=1, help="Evaluate the first N examples only."
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        help="Comma-separated subset of bleu,rouge1,rouge2,rougeL,exact_match,gen_len (default all).",
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda[:N]."),
    output: Path | None = typer.Option(
        None, "--output", "-o", metavar="DIR", help="Write report.json and report.md here."
    ),
    experiment: str = typer.Option(
        "eval", "--experiment", "-e", help="Experiment of the run that records the evaluation."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Evaluate a trained model on a dataset version: BLEU, ROUGE-1/2/L, exact match and generation length,
    overall, per slice and against the copy baseline; recorded as a run with lineage to the data."""
    from modelyard.data._versions import parse_spec

    split_named = split is not None  # as in a gate policy: a --file named for another split contradicts it
    split = split if split is not None else "test"
    if split not in _SPLITS:
        raise UsageError(f"--split must be one of {', '.join(_SPLITS)}, not {split!r}")
    parse_spec(data)  # NAME@V: an evaluation names the exact version it read
    path = Path(target)
    with acting() as (platform, ctx), tempfile.TemporaryDirectory(prefix="yard-eval-") as tmp_name:
        tmp = Path(tmp_name)
        run_id: str | None = None
        recipe: Recipe | None = None
        if path.is_dir():
            fetch: Callable[[], Path] = lambda: path  # noqa: E731
            label = str(path.resolve())
        elif path.exists():
            raise UsageError(f"{target} is a file; give the model directory (the one holding manifest.json)")
        elif _RUN_ID.fullmatch(target):
            run_id, fetch, recipe = _model_from_run(platform, ctx, target, tmp)
            label = f"run:{run_id}/model"
        else:
            raise UsageError(
                f"{target!r} is neither a model directory nor a run id; give a directory written by "
                "save_model or a run id (6+ hex characters, see `yard runs ls`)"
            )
        section_data = _data_section(
            data,
            recipe,
            file,
            {"source_field": source_field, "target_field": target_field, "group_field": group_field},
        )
        section = _section(recipe, metrics, decoding, num_beams, max_new_tokens, batch_size)
        examples, member, how = _examples(
            platform, ctx, data, cast("SplitName", split), section_data, recipe, split_named
        )
        if max_samples is not None:
            examples = examples[:max_samples]
        dev = _device(device)
        model, tokenizer = _load(fetch())
        model.to(dev)
        source_len = max_source_length or (recipe.tokenizer.max_source_length if recipe is not None else 512)
        from modelyard.training._eval import evaluate

        info: dict[str, Any] = {
            "model": label,
            "data": data,
            "file": member,
            "selection": how,
            "source_field": section_data.source_field,
            "target_field": section_data.target_field,
            "group_field": section_data.group_field or "",
        }
        if run_id is not None:
            info["evaluated_run"] = run_id
        started = time.monotonic()
        with _progress(f"evaluating {len(examples)} examples") as progress:
            report = evaluate(
                model,
                tokenizer,
                examples,
                section,
                max_source_length=source_len,
                device=dev,
                progress=progress,
                info=info,
            )
        elapsed = time.monotonic() - started
        tags = {
            "eval.model": label,
            "eval.data": data,
            "eval.selection": how,
        }
        if run_id is not None:
            tags["eval.run"] = run_id
        params: dict[str, object] = {
            "data": data,
            "split": split,
            "file": member,
            "n": report.n,
            "metrics": ",".join(section.metrics),
            **{k: v for k, v in report.decoding.items()},
        }
        name = f"eval {run_id[:12] if run_id else path.name}"
        eval_run = _record(platform, experiment, name, report, tags, params, data)
    if output is not None:
        _write_outputs(report, output)
    if json_out:
        print_json(report.to_dict())
        return
    _print(report)
    where = f"; report in {output}" if output is not None else ""
    console.print(
        f"recorded run {eval_run} in experiment {experiment!r} ({elapsed:.1f}s){where}", markup=False
    )
