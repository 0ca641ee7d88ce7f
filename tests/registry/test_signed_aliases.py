"""Signed alias records: someone able to write the database cannot repoint an alias, restore an earlier
pointer, or make a rollback land on a version the alias never held. Each check edits the rows with SQL, as
such a person would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from modelyard import registry
from modelyard.core import Platform
from modelyard.errors import IntegrityError
from modelyard.registry import _aliases
from modelyard.testing import Yard


def _sql(platform: Platform, statement: str, **params: Any) -> Any:
    with platform.db.write() as s:
        result = s.execute(text(statement), params)
        return result.all() if result.returns_rows else None


def _alias_row(platform: Platform, alias: str) -> Any:
    return _sql(
        platform,
        "SELECT a.version_id, a.body, a.signature, a.key_id FROM model_aliases a "
        "JOIN models m ON m.id = a.model_id WHERE m.name = 't5' AND a.alias = :a",
        a=alias,
    )[0]


def _version_id(platform: Platform, version: int) -> int:
    rows = _sql(
        platform,
        "SELECT v.id FROM model_versions v JOIN models m ON m.id = v.model_id "
        "WHERE m.name = 't5' AND v.version = :v",
        v=version,
    )
    return int(rows[0][0])


def _every_reader_refuses(platform: Platform, spec: str, match: str) -> None:
    ctx = platform.context()
    for read in (
        lambda: registry.show(platform, ctx, spec),  # what serving follows
        lambda: registry.read_manifest(platform, ctx, spec),  # what load, gates and monitoring read
        lambda: registry.verify(platform, ctx, spec),
        lambda: registry.load(spec, platform=platform, ctx=ctx),
    ):
        with pytest.raises(IntegrityError, match=match):
            read()


@pytest.fixture
def three(platform: Platform, model_dir: Path) -> Platform:
    ctx = platform.context()
    for _ in range(3):
        registry.register(platform, ctx, model_dir, "t5")
    return platform


def test_an_alias_repointed_in_the_database_is_refused_until_pointed_again(three: Platform) -> None:
    p, ctx = three, three.context()
    registry.set_alias(p, ctx, "t5@1", "staging")
    body = json.loads(_alias_row(p, "staging").body)
    assert (body["model"], body["alias"], body["version"], body["stack"]) == ("t5", "staging", 1, [])
    assert registry.show(p, ctx, "t5@staging").version == 1

    assert registry.list_models(p, ctx)[0].unverified == []
    _sql(p, "UPDATE model_aliases SET version_id = :v WHERE alias = 'staging'", v=_version_id(p, 3))
    _every_reader_refuses(p, "t5@staging", "signed record says 1")
    # The listing shows what the row says, marked as refused (it showed staging->3 as if it were true).
    [model] = registry.list_models(p, ctx)
    assert (model.aliases, model.unverified) == ({"staging": 3}, ["staging"])
    # The versions themselves are untouched, and a rollback does not trust the altered record either.
    assert registry.show(p, ctx, "t5@3").version == 3
    with pytest.raises(IntegrityError, match="alias"):
        registry.rollback(p, ctx, "t5", "staging")

    assert registry.set_alias(p, ctx, "t5@2", "staging").version == 2
    assert registry.show(p, ctx, "t5@staging").version == 2
    assert registry.list_models(p, ctx)[0].unverified == []
    assert json.loads(_alias_row(p, "staging").body)["stack"] == []  # the altered history is not carried


def test_show_and_version_listings_mark_a_repointed_alias_as_refused(three: Platform, yard: Yard) -> None:
    """`yard models show t5@3` said "aliases: staging" after the row was repointed at 3, while t5@staging
    was refused: only `yard models ls` marked it."""
    p, ctx = three, three.context()
    registry.set_alias(p, ctx, "t5@1", "staging")
    registry.set_alias(p, ctx, "t5@3", "canary")
    assert (registry.show(p, ctx, "t5@3").aliases, registry.show(p, ctx, "t5@3").unverified) == (
        ["canary"],
        [],
    )
    _sql(p, "UPDATE model_aliases SET version_id = :v WHERE alias = 'staging'", v=_version_id(p, 3))
    for info in (
        registry.show(p, ctx, "t5@3"),
        registry.read_manifest(p, ctx, "t5@3")[0],
        registry.list_versions(p, ctx, "t5")[2],
    ):
        assert (info.aliases, info.unverified) == (["canary", "staging"], ["staging"])
    assert registry.list_versions(p, ctx, "t5")[0].aliases == []
    shown = yard("models", "show", "t5@3")
    assert shown.code == 0, shown.err
    assert "canary, staging (unverified: refused)" in shown.out
    listed = yard("models", "ls", "t5")
    assert listed.code == 0 and "canary, staging (unverified: refused)" in listed.out
    assert yard("models", "show", "t5@3", "--json").json()["unverified"] == ["staging"]
    card = registry.model_card(p, ctx, "t5@3").markdown()
    assert "Aliases: canary, staging (unverified: refused)." in card


def test_an_earlier_signed_record_restored_in_the_database_is_refused(three: Platform) -> None:
    p, ctx = three, three.context()
    registry.set_alias(p, ctx, "t5@1", "staging")
    old = _alias_row(p, "staging")
    registry.set_alias(p, ctx, "t5@2", "staging")
    _sql(
        p,
        "UPDATE model_aliases SET version_id = :v, body = :b, signature = :g, key_id = :k "
        "WHERE alias = 'staging'",
        v=old.version_id,
        b=old.body,
        g=old.signature,
        k=old.key_id,
    )
    _every_reader_refuses(p, "t5@staging", "not the one its latest change wrote")


def test_a_record_copied_to_another_alias_or_edited_is_refused(three: Platform) -> None:
    p, ctx = three, three.context()
    registry.set_alias(p, ctx, "t5@1", "staging")
    registry.set_alias(p, ctx, "t5@3", "canary")
    canary = _alias_row(p, "canary")
    _sql(
        p,
        "UPDATE model_aliases SET version_id = :v, body = :b, signature = :g WHERE alias = 'staging'",
        v=canary.version_id,
        b=canary.body,
        g=canary.signature,
    )
    _every_reader_refuses(p, "t5@staging", "alias")
    # A body edited to match the new pointer no longer matches its signature.
    body = json.loads(canary.body) | {"alias": "staging"}
    _sql(p, "UPDATE model_aliases SET body = :b WHERE alias = 'staging'", b=json.dumps(body))
    _every_reader_refuses(p, "t5@staging", "signature does not match")


def test_an_unsigned_record_is_refused_with_the_way_out(three: Platform) -> None:
    """What a home made before aliases were signed holds (and what removing the signature gives)."""
    p, ctx = three, three.context()
    registry.set_alias(p, ctx, "t5@1", "staging")
    _sql(p, "UPDATE model_aliases SET body = NULL, signature = NULL, key_id = NULL")
    _every_reader_refuses(p, "t5@staging", r"not signed.*yard models alias t5@V staging")
    assert registry.set_alias(p, ctx, "t5@1", "staging").version == 1
    assert registry.show(p, ctx, "t5@staging").version == 1


def test_a_rollback_follows_the_signed_record_not_the_history_rows(three: Platform) -> None:
    p, ctx = three, three.context()
    for v in (1, 2, 3):
        registry.set_alias(p, ctx, f"t5@{v}", "staging")
    stack = json.loads(_alias_row(p, "staging").body)["stack"]
    assert [v for v, _ in stack] == [1, 2]
    # An event inserted to send the rollback to a version the alias never held is detected...
    _sql(
        p,
        "INSERT INTO model_alias_events (model_id, alias, action, version, previous, reason, at, by) "
        "SELECT model_id, 'staging', 'set', 3, 2, '', at, by FROM model_alias_events "
        "ORDER BY id DESC LIMIT 1",
    )
    with pytest.raises(IntegrityError, match="latest change"):
        registry.rollback(p, ctx, "t5", "staging")
    _sql(p, "DELETE FROM model_alias_events WHERE id = (SELECT MAX(id) FROM model_alias_events)")
    # ...and with the history intact the rollback walks the signed stack.
    assert registry.rollback(p, ctx, "t5", "staging").version == 2
    assert registry.rollback(p, ctx, "t5", "staging").version == 1
    assert json.loads(_alias_row(p, "staging").body)["stack"] == []


def test_pointing_an_alias_at_the_version_it_holds_does_not_make_a_rollback_stay_put(three: Platform) -> None:
    """Setting (or re-promoting) the version an alias already holds pushed it on the stack again: the next
    rollback "rolled back" to the same version (staging -> 2, rolled back from 2)."""
    p, ctx = three, three.context()
    for v in (1, 2, 2):
        registry.set_alias(p, ctx, f"t5@{v}", "staging")
    assert [v for v, _ in json.loads(_alias_row(p, "staging").body)["stack"]] == [1]
    change = registry.rollback(p, ctx, "t5", "staging")
    assert (change.version, change.previous) == (1, 2)
    assert [e.action for e in registry.history(p, ctx, "t5", "staging")] == ["set", "set", "set", "rollback"]


def test_the_rollback_stack_is_bounded(three: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    p, ctx = three, three.context()
    monkeypatch.setattr(_aliases, "STACK_LIMIT", 2)
    for v in (1, 2, 3, 1, 2):
        registry.set_alias(p, ctx, f"t5@{v}", "staging")
    assert [v for v, _ in json.loads(_alias_row(p, "staging").body)["stack"]] == [3, 1]
    assert registry.rollback(p, ctx, "t5", "staging").version == 1
    assert registry.rollback(p, ctx, "t5", "staging").version == 3


def test_the_migration_matches_the_model_and_an_upgraded_home_refuses_its_unsigned_aliases(
    three: Platform,
) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from modelyard.core import _db
    from modelyard.core._models import Base

    p, ctx = three, three.context()
    with p.db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if "model_aliases" in repr(d)] == []

    registry.set_alias(p, ctx, "t5@1", "staging")
    # Back to the revision before signed aliases (the alias row stays, without the new columns)...
    with p.db.engine.connect() as conn:
        cfg = _db._alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011_run_stale_at")
        conn.commit()
    p.close()
    # ...and opened again: upgraded, the unsigned record is refused with the way out.
    again = Platform(p.settings)
    try:
        _every_reader_refuses(again, "t5@staging", "not signed")
        assert registry.set_alias(again, again.context(), "t5@1", "staging").version == 1
        assert registry.show(again, again.context(), "t5@staging").version == 1
    finally:
        again.close()


def test_on_postgresql_an_edited_alias_is_refused_and_rollback_walks_the_signed_stack(
    postgres_url: str, tmp_path: Path, model_dir: Path
) -> None:
    from modelyard.testing import make_platform

    p = make_platform(tmp_path / "pg-home", database_url=postgres_url)
    try:
        ctx = p.context()
        for v in (1, 2, 3):
            registry.register(p, ctx, model_dir, "t5")
            registry.set_alias(p, ctx, f"t5@{v}", "staging")
        assert registry.rollback(p, ctx, "t5", "staging").version == 2
        _sql(p, "UPDATE model_aliases SET version_id = :v WHERE alias = 'staging'", v=_version_id(p, 3))
        _every_reader_refuses(p, "t5@staging", "signed record says 2")
        assert registry.set_alias(p, ctx, "t5@1", "staging").version == 1
        assert registry.show(p, ctx, "t5@staging").version == 1
    finally:
        p.close()


def test_on_postgresql_concurrent_alias_changes_leave_a_record_that_checks(
    postgres_url: str, tmp_path: Path, model_dir: Path
) -> None:
    """Without the model's row lock, two changes could commit in the other order than their events were
    numbered, leaving a record whose event is not the latest: the alias refused as if tampered with."""
    import threading

    from modelyard.core import Platform
    from modelyard.testing import make_platform

    p = make_platform(tmp_path / "pg-home", database_url=postgres_url)
    errors: list[BaseException] = []
    try:
        ctx = p.context()
        for _ in range(2):
            registry.register(p, ctx, model_dir, "t5")

        def change(version: int) -> None:
            mine = Platform(p.settings)
            try:
                for _ in range(15):
                    registry.set_alias(mine, mine.context(), f"t5@{version}", "staging")
            except BaseException as exc:
                errors.append(exc)
            finally:
                mine.close()

        threads = [threading.Thread(target=change, args=(v,)) for v in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert registry.show(p, ctx, "t5@staging").version in (1, 2)
        assert len(registry.history(p, ctx, "t5", "staging")) == 30
    finally:
        p.close()
