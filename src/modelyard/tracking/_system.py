"""What a run captures by itself: where the code came from, how it was started, on what, and system load.

Nothing here may slow a run's start by much or import heavy packages: git gets a short timeout, and torch
or transformers are only consulted when the user's program already imported them.
"""

from __future__ import annotations

import json
import logging
import os
import platform as _platform
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from typing import Any

from modelyard.core._redact import REDACTED, redact_url, secret_name

log = logging.getLogger("modelyard.tracking")
_GIT_TIMEOUT_S = 2.0
_PACKAGES = ("modelyard", "torch", "transformers", "numpy", "optuna")
_OPTION = re.compile(r"^(-{1,2}[A-Za-z0-9][A-Za-z0-9_.\-]*)(=.*)?$", re.DOTALL)
# NAME=value, also as a Hydra override that adds a key (+name=value, ++name=value).
_ASSIGN = re.compile(r"^\+{0,2}(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)=", re.DOTALL)


def redact_argv(argv: list[str]) -> str:
    """The command line as a shell would take it, with secret values replaced by ``***``: the value of an
    option whose name has a secret word (``--hf-token value``, ``--password=value``; not ``--tokenizer`` or
    ``--max_tokens``: :func:`~modelyard.core._redact.secret_name`), of an env-style ``NAME=value``
    word, of secret-named keys in a JSON argument, and in URLs the password (``scheme://user:password@host``)
    and secret query parameters. The ``cmd`` tag is readable by every viewer of the project, so it must not
    carry tokens."""
    words: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not (arg.startswith("--") and _OPTION.match(arg)):  # "--next-option": a flag
            hide_next = False
            words.append(REDACTED)
            continue
        hide_next = False
        opt = _OPTION.match(arg)
        if opt is not None:
            if secret_name(opt.group(1)):
                if opt.group(2) is None:
                    hide_next = True  # the value is the next word
                    words.append(shlex.quote(arg))
                else:
                    words.append(shlex.quote(opt.group(1) + "=") + REDACTED)
                continue
            # An innocent option given a secret NAME=value inline: --env=HF_TOKEN=..., --set=db.password=...
            inline = _ASSIGN.match(opt.group(2)[1:]) if opt.group(2) else None
            if inline is not None and secret_name(inline["name"]):
                words.append(shlex.quote(f"{opt.group(1)}={inline.group(0)}") + REDACTED)
                continue
        else:
            assign = _ASSIGN.match(arg)
            if assign is not None and secret_name(assign["name"]):
                words.append(shlex.quote(assign.group(0)) + REDACTED)
                continue
        words.append(shlex.quote(_redact_json(arg) or redact_url(arg)))
    return " ".join(words)


def _redact_json(arg: str) -> str | None:
    """A JSON object or array argument (``--kwargs '{"token": "..."}'``) with the values of secret-named keys
    replaced, re-encoded compactly; None when ``arg`` is not one (or holds nothing to hide)."""
    if not arg.lstrip().startswith(("{", "[")):
        return None
    try:
        value = json.loads(arg)
    except ValueError:
        return None
    found = False

    def walk(v: Any) -> Any:
        nonlocal found
        if isinstance(v, dict):
            out = {}
            for k, item in v.items():
                hidden = secret_name(k) and item is not None
                found |= hidden
                out[k] = REDACTED if hidden else walk(item)
            return out
        return [walk(item) for item in v] if isinstance(v, list) else v

    redacted = walk(value)
    return json.dumps(redacted, ensure_ascii=False, separators=(",", ":")) if found else None


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or it hung
    return r.stdout if r.returncode == 0 else None


def capture_tags() -> dict[str, str]:
    """``git.commit``, ``git.dirty``, ``cmd``, ``python``, ``host`` and ``pkg.<name>`` versions."""
    tags: dict[str, str] = {
        # An argument with bytes that are not UTF-8 holds lone surrogates, which no store can hold.
        "cmd": (redact_argv(sys.argv)[:8000] if sys.argv and sys.argv[0] else sys.executable)
        .encode("utf-8", "backslashreplace")
        .decode("utf-8"),
        "python": _platform.python_version(),
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
    }
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit.strip()
        status = _git("status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags["git.dirty"] = "true" if status.strip() else "false"
    for name in _PACKAGES:
        # Heavy packages only when the program already imported them: capture must not import torch.
        if name != "modelyard" and name not in sys.modules:
            continue
        try:
            tags[f"pkg.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return tags


def system_sampler() -> Callable[[], dict[str, float]] | None:
    """A function returning ``system/*`` metrics (CPU, RSS, GPU where present), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    proc = psutil.Process()
    proc.cpu_percent(None)  # the first call only starts the measurement
    gpu = _gpu_reader()

    def sample() -> dict[str, float]:
        out = {
            "system/cpu_percent": float(psutil.cpu_percent(None)),
            "system/process_cpu_percent": float(proc.cpu_percent(None)),
            "system/rss_mb": proc.memory_info().rss / 1e6,
        }
        if gpu is not None:
            out.update(gpu())
        return out

    return sample


def _gpu_reader() -> Callable[[], dict[str, float]] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

        def nvml() -> dict[str, float]:
            out: dict[str, float] = {}
            for i, h in enumerate(handles):
                out[f"system/gpu{i}_util_percent"] = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
                out[f"system/gpu{i}_memory_mb"] = pynvml.nvmlDeviceGetMemoryInfo(h).used / 1e6
            return out

        return nvml
    except Exception as exc:  # not installed, no driver, no GPU
        log.debug("no NVML: %s", exc)
    torch: Any = sys.modules.get("torch")  # only if the program imported it
    if torch is None or not torch.cuda.is_available():
        return None

    def cuda() -> dict[str, float]:
        out: dict[str, float] = {}
        for i in range(torch.cuda.device_count()):
            out[f"system/gpu{i}_memory_mb"] = torch.cuda.memory_allocated(i) / 1e6
            try:
                out[f"system/gpu{i}_util_percent"] = float(torch.cuda.utilization(i))
            except Exception as exc:  # needs pynvml underneath
                log.debug("no GPU utilisation: %s", exc)
        return out

    return cuda
