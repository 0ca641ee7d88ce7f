"""A tiny trained T5 and its ONNX exports, shared by tests/optimize and tests/serving (built once per test
process: the first test that asks pays for it, about 10 s on one core).

The model is the ``tiny`` preset (2 layers, d_model 64) with a 200-token SentencePiece vocabulary, trained for
a few dozen AdamW steps on ``make_examples`` data: enough for input-dependent outputs with clear margins
between the top logits, so greedy decoding is stable under float rounding differences between runtimes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelyard.training import Example, make_examples, parse_recipe

STEPS = 80
_CACHE: dict[str, Tiny] = {}


@dataclass(frozen=True)
class Tiny:
    model_dir: Path  # written by save_model
    onnx_dir: Path  # export_onnx(model_dir)
    root: Path  # scratch space of the builder

    def int8_dir(self) -> Path:
        from modelyard.optimize import quantize_int8

        out = self.root / "int8"
        if not out.exists():
            quantize_int8(self.onnx_dir, out)
        return out

    def torch_model(self) -> Any:
        from modelyard.training import load_model

        return load_model(self.model_dir)

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.model_dir))


def sources(n: int = 40, seed: int = 7) -> list[str]:
    return [r["source"] for r in make_examples(n, seed=seed)]


def tiny(factory: pytest.TempPathFactory) -> Tiny:
    """The shared tiny model (built on first use)."""
    key = str(factory.getbasetemp())
    if key not in _CACHE:
        _CACHE[key] = _build(factory.mktemp("onnx-tiny"))
    return _CACHE[key]


# Fixtures shared by the modules that bind them (`model, onnx_dir = _onnx_tiny.model, _onnx_tiny.onnx_dir`;
# ruff reads names only imported as unused): the tiny model, and each of its ONNX exports in turn.
@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny(tmp_path_factory)


@pytest.fixture(params=["fp32", "int8"])
def onnx_dir(request: pytest.FixtureRequest, model: Tiny) -> Path:
    return model.onnx_dir if request.param == "fp32" else model.int8_dir()


def _build(root: Path) -> Tiny:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    from modelyard.optimize import export_onnx
    from modelyard.training import build_model, build_tokenizer, save_model

    examples = [Example(r["source"], r["target"]) for r in make_examples(400, seed=1)]
    recipe = parse_recipe(
        {
            "data": {"train": "n@1"},
            "tokenizer": {"train": "sentencepiece", "vocab_size": 200},
            "model": {"init": "scratch", "preset": "tiny"},
            "hyperparameters": {"lr": 3e-3, "max_steps": STEPS, "seed": 4},
        }
    )
    tokenizer = build_tokenizer(recipe, examples, root / "tokenizer")
    model = build_model(recipe, vocab_size=len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # dropout
        for _ in range(STEPS):
            idx = torch.randint(0, len(examples), (16,), generator=generator).tolist()
            enc = tokenizer([examples[i].source for i in idx], padding=True, return_tensors="pt")
            labels = tokenizer([examples[i].target for i in idx], padding=True, return_tensors="pt")[
                "input_ids"
            ]
            labels[labels == tokenizer.pad_token_id] = -100
            loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model_dir = save_model(model.eval(), tokenizer, root / "model")
    onnx_dir = export_onnx(model_dir, root / "onnx")
    return Tiny(model_dir=model_dir, onnx_dir=onnx_dir, root=root)
