"""Reading the audit log."""

from __future__ import annotations

from modelyard.core import Platform, list_records


def test_a_limited_listing_shows_the_newest_records(platform: Platform) -> None:
    """`yard audit ls` (limit 200) listed the first records of the chain: once a project had more, what
    just happened was never shown. It lists the newest ones, in chain order."""
    ctx = platform.context()
    for i in range(5):
        platform.audit(ctx, "project.read", f"thing:{i}", "ok")
    everything = list_records(platform, ctx)
    newest = list_records(platform, ctx, limit=3)
    assert [r["seq"] for r in newest] == [r["seq"] for r in everything[-3:]]
    assert [r["resource"] for r in newest] == ["thing:2", "thing:3", "thing:4"]
    assert [r["resource"] for r in list_records(platform, ctx, actor=ctx.user, limit=1)] == ["thing:4"]


def test_an_attempt_that_fails_before_its_mutation_is_on_record(platform: Platform) -> None:
    """Work done before a mutation's transaction (verification, gates): our error is refused or denied on
    record with its code and message, any other is an error named by its type (with ``detail``), and either
    is raised on as it was."""
    import pytest

    from modelyard.errors import PermissionDeniedError, UsageError

    ctx = platform.context()
    cause = ValueError("deep")
    with pytest.raises(UsageError) as err, platform.attempt(ctx, "model.deploy", "thing:a", {"v": 1}):
        raise UsageError("bad input") from cause
    assert err.value.__cause__ is None  # the refusal is the whole story, as platform.refuse tells it
    with pytest.raises(PermissionDeniedError), platform.attempt(ctx, "model.deploy", "thing:b"):
        raise PermissionDeniedError("four eyes")
    with (
        pytest.raises(RuntimeError, match="torch"),
        platform.attempt(ctx, "model.deploy", "thing:c", {"v": 1}),
    ):
        raise RuntimeError("torch")
    with platform.attempt(ctx, "model.deploy", "thing:d"):
        pass  # nothing failed: nothing on record
    records = {r["resource"]: r for r in list_records(platform, ctx) if r["resource"].startswith("thing:")}
    assert sorted(records) == ["thing:a", "thing:b", "thing:c"]
    assert records["thing:a"]["outcome"] == "refused"
    assert records["thing:a"]["detail"] == {"code": UsageError.code, "message": "bad input", "via": "local"}
    assert records["thing:b"]["outcome"] == "denied"
    assert records["thing:c"]["outcome"] == "error"
    assert records["thing:c"]["detail"] == {"v": 1, "error": "RuntimeError", "via": "local"}
