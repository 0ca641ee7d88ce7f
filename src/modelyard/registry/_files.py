"""What a model version may contain: weights as safetensors or ONNX, configs as JSON/YAML, tokenizer files.

Checked before a byte is stored, on names and on contents: a pickle is refused whatever its name (the
pickle protocol header, the zip container torch.save writes, or a header-less protocol 0/1 pickle that
imports or calls something: anywhere in a text file, in a weights file's first 8 MiB), and a ``.safetensors``
or ``.json`` file
must parse as one. Names are stored NFC-normalised; two that normalise or case-fold alike are refused.
Symlinks and special files are refused: a version describes bytes inside its directory.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelyard.core._paths import safe_key
from modelyard.errors import UsageError

#: suffix -> kind. Tokenizer files: sentencepiece models (.model), vocabularies and merges (.txt).
ALLOWED = {
    ".safetensors": "weights",
    ".onnx": "weights",
    ".onnx_data": "weights",  # ONNX external data (weights.onnx.data: the graphs' shared tensors)
    ".data": "weights",
    ".json": "config",
    ".yaml": "config",
    ".yml": "config",
    ".model": "tokenizer",
    ".txt": "tokenizer",
    ".md": "doc",
}
PICKLE_SUFFIXES = frozenset(
    {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".dill"}
)
MAX_FILES = 1000
_SAFETENSORS_HEADER_MAX = 100 << 20


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative, POSIX
    local: Path
    size: int


def _refuse(root: Path, message: str) -> UsageError:
    return UsageError(f"{root}: {message}")


def _looks_pickled(head: bytes) -> bool:
    # Pickle protocol 2+ starts with PROTO (0x80) and the protocol number; torch.save's default format
    # is a zip archive holding a pickle. Neither is ever a safetensors, ONNX, JSON or text file.
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(b"PK\x03\x04")


# Opcodes through which unpickling imports or calls something; a pickle without them only builds data.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"})
_PICKLE_SCAN = 8 << 20


def _runs_code_when_unpickled(stream: BinaryIO) -> bool:
    """Whether ``stream`` starts with a whole pickle of any protocol (0 and 1 have no header) that imports
    or calls something: pickle.load would run it, whatever the file is called."""
    code = False
    try:
        for op, _, _ in pickletools.genops(stream):
            code = code or op.name in _CODE_OPCODES
            if op.name == "STOP":
                return code
    except Exception:  # not a pickle (most files fail on their first byte)
        return False
    return False


def _check_content(root: Path, rel: str, path: Path, size: int) -> None:
    with open(path, "rb") as fh:
        head = fh.read(8)
        suffix = Path(rel).suffix.lower()
        pickled = _looks_pickled(head)
        if not pickled and suffix not in (".safetensors", ".json"):  # those two are parsed below
            fh.seek(0)
            # Text kinds are read whole (padding cannot push the payload out of sight; they are small);
            # weight files, up to 8 MiB (a length field in random bytes must not make us read gigabytes).
            text = ALLOWED.get(suffix) in ("config", "tokenizer", "doc") and suffix != ".model"
            pickled = _runs_code_when_unpickled(fh if text else io.BytesIO(fh.read(_PICKLE_SCAN)))
            fh.seek(8)
        if pickled:
            raise _refuse(
                root,
                f"{rel} is a pickle (or a torch zip archive); pickles can run code when loaded "
                "and are never accepted: save the weights as safetensors",
            )
        if suffix == ".safetensors":
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(_SAFETENSORS_HEADER_MAX, size - 8):
                raise _refuse(root, f"{rel} is not a safetensors file (bad header length)")
            try:
                header = json.loads(fh.read(n))
            except (ValueError, RecursionError):  # RecursionError: [[[[... nested past the stack
                header = None
            if not isinstance(header, dict):
                raise _refuse(root, f"{rel} is not a safetensors file (its header is not a JSON object)")
        elif suffix == ".json":
            fh.seek(0)
            try:
                json.load(fh)
            except (ValueError, UnicodeDecodeError) as exc:
                raise _refuse(root, f"{rel} is not valid JSON ({exc})") from None
            except RecursionError:
                raise _refuse(root, f"{rel} is not valid JSON (it is nested too deeply)") from None


def scan_model_dir(root: str | os.PathLike[str]) -> list[ModelFile]:
    """Every file of ``root`` checked as above, sorted by relative path; UsageError names the first
    refused one and nothing has been stored."""
    base = Path(root)
    if not base.is_dir():
        raise UsageError(f"{base} is not a directory; give the directory of a saved model or a run id")
    out: list[ModelFile] = []
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            full = Path(dirpath) / name
            rel = full.relative_to(base).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(base, f"{rel} is a symlink; a model version holds regular files only")
            if name in dirnames:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(base, f"{rel} is not a regular file")
            try:
                rel = safe_key(rel, what="model file name")  # NFC: the name it is stored and written under
            except UsageError as exc:
                raise _refuse(base, exc.message) from None
            if rel.lower() in seen:  # one file would overwrite the other on download (or on macOS/Windows)
                raise _refuse(
                    base, f"{rel} and {seen[rel.lower()]} are one name once normalised or case-folded"
                )
            seen[rel.lower()] = rel
            suffix = Path(rel).suffix.lower()
            if suffix in PICKLE_SUFFIXES:
                raise _refuse(
                    base,
                    f"{rel} is a pickle-format file ({suffix}); pickles can run code when "
                    "loaded and are never accepted: save the weights as safetensors or ONNX",
                )
            if suffix not in ALLOWED:
                raise _refuse(
                    base,
                    f"{rel}: {suffix or 'files without a suffix'} not accepted in a model "
                    f"version; expected one of {', '.join(sorted(ALLOWED))}",
                )
            _check_content(base, rel, full, st.st_size)
            out.append(ModelFile(rel, full, st.st_size))
            if len(out) > MAX_FILES:
                raise _refuse(
                    base, f"more than {MAX_FILES} files; a model version is weights, configs and a tokenizer"
                )
    if not out:
        raise _refuse(base, "the directory is empty")
    if not any(f.path.lower().endswith((".safetensors", ".onnx")) for f in out):
        raise _refuse(base, "no weights found (expected *.safetensors or *.onnx)")
    return out


def model_format(files: list[ModelFile]) -> str:
    """``onnx`` when the version holds ONNX graphs, else ``safetensors``."""
    return "onnx" if any(f.path.endswith(".onnx") for f in files) else "safetensors"
