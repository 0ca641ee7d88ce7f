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
