"""`yard models ...`, `yard gates check` and `yard keys ls` end to end on a trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.core._models import Blob
from modelyard.testing import Yard

pytestmark = pytest.mark.slow


@pytest.fixture
def home_with_data(yard: Yard, home: Path, tmp_path: Path) -> Path:
    assert yard("init").code == 0
    r = yard("examples", "make-data", tmp_path / "norm", "--rows", "300", "--seed", "1", "--version", "norm")
    assert r.code == 0, r.err
    return home


def write_policy(path: Path, **checks: object) -> Path:
    data = {
        "data": {"dataset": "norm@1", "file": "test.jsonl", "group_field": "locale"},
        "decoding": {"max_new_tokens": 24},
        **checks,
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_register_list_show_verify_card_and_keys(
    yard: Yard, home_with_data: Path, model_dir: Path, tmp_path: Path
) -> None:
    r = yard("models", "register", model_dir, "--name", "t5", "-d", "normalises dates")
    assert r.code == 0, r.err
    assert r.out.startswith("t5@1:") and "signed by key" in r.out
    [model] = yard("models", "ls", "--json").json()
    assert (model["name"], model["versions"], model["latest"]) == ("t5", 1, 1)
    [version] = yard("models", "ls", "t5", "--json").json()
    assert (version["version"], version["format"], version["variant"]) == (1, "safetensors", "fp32")
    shown = yard("models", "show", "t5@1", "--json").json()
    assert {f["path"] for f in shown["manifest"]["files"]} >= {"model.safetensors", "config.json"}
    r = yard("models", "verify", "t5@1")
    assert r.code == 0 and "ok" in r.out and "signature" in r.out
    r = yard("models", "card", "t5@1", "-o", tmp_path / "card")
    assert r.code == 0, r.err
    assert "normalises dates" in (tmp_path / "card" / "card.md").read_text()
    assert (tmp_path / "card" / "card.html").read_text().startswith("<!doctype html>")
    (tmp_path / "taken").write_text("x")
    r = yard("models", "card", "t5@1", "-o", tmp_path / "taken")
    assert r.code == 2 and "is a file; give a directory" in r.error
    r = yard("keys", "ls")
    assert r.code == 0 and "Ed25519" in r.out and shown["key_id"][:12] in r.out
    r = yard("models", "download", "t5@1", tmp_path / "out")
    assert (
        r.code == 0
        and (tmp_path / "out" / "model.safetensors").read_bytes()
        == (model_dir / "model.safetensors").read_bytes()
    )
    # The refusal named an option the command did not have ("pass overwrite"); --overwrite is it.
    (tmp_path / "out" / "model.safetensors").write_bytes(b"damaged")
    r = yard("models", "download", "t5@1", tmp_path / "out")
    assert r.code == 2 and "pass --overwrite" in r.error
    r = yard("models", "download", "t5@1", tmp_path / "out", "--overwrite")
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (
        model_dir / "model.safetensors"
    ).read_bytes()


def test_what_cannot_be_read_or_written_is_one_clear_line(
    yard: Yard, home_with_data: Path, model_dir: Path, tmp_path: Path
) -> None:
    # Each was "unexpected FileNotFoundError/NotADirectoryError", or named the model directory instead of
    # the missing report.
    r = yard("models", "register", model_dir, "--name", "t5", "--eval-report", tmp_path / "nope.json")
    assert r.code == 2 and f"cannot read the evaluation report {tmp_path / 'nope.json'}" in r.error
    assert yard("models", "register", model_dir, "--name", "t5").code == 0
    (tmp_path / "taken").write_text("x")
    r = yard("models", "card", "t5@1", "-o", tmp_path / "taken" / "cards")
    assert r.code == 2 and "cannot write the card into --output" in r.error and "unexpected" not in r.err
    r = yard("models", "download", "t5@1", tmp_path / "taken" / "out")
    assert r.code == 2 and "cannot write into" in r.error and "unexpected" not in r.err
    assert (tmp_path / "taken").read_text() == "x"


def test_card_and_download_never_write_through_a_planted_symlink(
    yard: Yard, home_with_data: Path, model_dir: Path, tmp_path: Path
) -> None:
    """card.md planted as a link in --output overwrote the file it pointed to (~/.bashrc, say); a
    symlinked download DIR put the model where the link pointed (data checkout and runs download refuse)."""
    assert yard("models", "register", model_dir, "--name", "t5").code == 0
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "card.md").symlink_to(victim)
    r = yard("models", "card", "t5@1", "-o", cards)
    assert r.code == 0, r.err
    assert victim.read_text() == "keep me"
    assert not (cards / "card.md").is_symlink() and "t5" in (cards / "card.md").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    r = yard("models", "download", "t5@1", tmp_path / "link")
    assert r.code == 2 and "is a symbolic link" in r.error
    assert not any(elsewhere.iterdir())


def test_verify_of_a_damaged_file_exits_1_naming_it(
    yard: Yard, home_with_data: Path, model_dir: Path
) -> None:
    assert yard("models", "register", model_dir, "--name", "t5").code == 0
    shown = yard("models", "show", "t5", "--json").json()
    digest = next(f["sha256"] for f in shown["manifest"]["files"] if f["path"] == "config.json")
    with Platform(load_settings(home=home_with_data)) as platform, platform.db.read() as s:
        name, offset = s.execute(
            select(Blob.object_name, Blob.pack_offset).where(Blob.digest == digest)
        ).one()
    obj = home_with_data / "artifacts" / name
    data = bytearray(obj.read_bytes())
    data[(offset or 0) + 40] ^= 0x01
    obj.write_bytes(bytes(data))
    r = yard("models", "verify", "t5@1")
    assert r.code == 1 and "config.json" in r.error and "Traceback" not in r.err


def test_a_pickle_is_refused_with_exit_2(yard: Yard, home_with_data: Path, model_dir: Path) -> None:
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04\x95")
    r = yard("models", "register", model_dir, "--name", "t5")
    assert r.code == 2 and "pytorch_model.bin" in r.error and "pickle" in r.error
    assert yard("models", "ls", "--json").json() == []


def test_gates_promote_and_rollback(
    yard: Yard, home_with_data: Path, model_dir: Path, tmp_path: Path
) -> None:
    for _ in range(2):
        assert yard("models", "register", model_dir, "--name", "t5").code == 0
    passing = write_policy(tmp_path / "ok.yaml", metrics=["rougeL >= 0.0"], size={"max_mb": 50})
    failing = write_policy(tmp_path / "strict.yaml", metrics=["rougeL >= 0.99"])
    r = yard("gates", "check", "t5@1", "--policy", failing)
    assert r.code == 1 and "FAIL by" in r.out and "rougeL >= 0.99" in r.out
    r = yard("gates", "check", "t5@1", "--policy", passing, "--json")
    assert r.json()["passed"] is True

    # The OS user registered both versions: it may not approve them (four eyes), even as admin.
    r = yard("models", "promote", "t5@1", "--to", "production", "--policy", passing)
    assert r.code == 1 and "four eyes" in r.error
    assert yard("users", "add", "ann", "--role", "approver").code == 0
    token = yard("tokens", "create", "--user", "ann").out.strip().split()[-1]
    ann = {"YARD_TOKEN": token}
    r = yard("models", "promote", "t5@1", "--to", "production", env=ann)
    assert r.code == 2 and "--policy" in r.error
    r = yard("models", "promote", "t5@1", "--to", "production", "--policy", failing, env=ann)
    assert r.code == 1 and "failed its quality gates" in r.error and "0.99" in r.error
    relative = write_policy(tmp_path / "rel.yaml", metrics=["rougeL >= production - 0.5"])
    r = yard("models", "promote", "t5@1", "--to", "production", "--policy", relative, env=ann)
    assert r.code == 0, r.err
    # the first promotion has nothing at production to compare with: promote says the check was skipped
    assert "note: metrics: rougeL >= production - 0.5 skipped: nothing at t5@production yet" in r.err
    typo = write_policy(tmp_path / "typo.yaml", metrics=["rougeL >= prodcution - 0.5"])
    r = yard("models", "promote", "t5@2", "--to", "production", "--policy", typo, env=ann)
    assert r.code == 1 and "t5@prodcution does not exist; did you mean 'production'?" in r.error
    r = yard("models", "promote", "t5@2", "--to", "production", "--policy", relative, env=ann)
    assert r.code == 0, r.err
    assert "t5@production -> 2 (was 1)" in r.out
    r = yard("models", "rollback", "t5", "--alias", "production", "-m", "latency regression")
    assert r.code == 0 and "-> 1 (rolled back from 2)" in r.out
    history = yard("models", "history", "t5", "--json").json()
    assert [(e["action"], e["version"], e["by"]) for e in history] == [
        ("promote", 1, "ann"),
        ("promote", 2, "ann"),
        ("rollback", 1, history[-1]["by"]),
    ]
    assert history[-1]["reason"] == "latency regression"
    r = yard("models", "alias", "t5@2", "staging")
    assert r.code == 0 and "t5@staging -> 2" in r.out
    r = yard("models", "alias", "t5@2", "production")
    assert r.code == 2 and "protected" in r.error
