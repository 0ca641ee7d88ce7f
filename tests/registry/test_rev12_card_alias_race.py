"""A model card says the version was verified when it was made: given an alias, the card describes the
version that was verified, even if the alias moves while the card is being made."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event

from modelyard import registry
from modelyard.core import Platform


def test_the_card_of_an_alias_describes_the_version_it_verified(
    platform: Platform, tiny_model: Callable[..., Path]
) -> None:
    ctx = platform.context()
    registry.register(platform, ctx, tiny_model(0.0), "cr")
    registry.register(platform, ctx, tiny_model(1.0), "cr")
    registry.set_alias(platform, ctx, "cr@1", "staging")

    # verify() reads the version's attestations last: right after it, staging moves to version 2, as a
    # concurrent `yard models alias` would.
    moved: list[int | None] = []

    def move(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not moved and "FROM model_attestations" in statement:
            moved.append(None)  # once: set_alias verifies too
            moved[0] = registry.set_alias(platform, ctx, "cr@2", "staging").version

    event.listen(platform.db.engine, "before_cursor_execute", move)
    try:
        card = registry.model_card(platform, ctx, "cr@staging")
    finally:
        event.remove(platform.db.engine, "before_cursor_execute", move)
    assert moved == [2]
    assert card.title == "Model card: cr@1"
