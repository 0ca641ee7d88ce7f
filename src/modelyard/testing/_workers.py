"""Process entry points for concurrency contracts (importable by the ``spawn`` start method)."""

from __future__ import annotations

import traceback

from modelyard.core import MetadataStore
from modelyard.core._audit import append


def open_fresh_store(url: str) -> str:
    """Open (and so migrate) a store; return '' or the error text."""
    try:
        store = MetadataStore(url)
        rev = store.current_revision()
        store.dispose()
        return "" if rev else "no schema revision after open"
    except Exception:
        return traceback.format_exc()


def append_audit_records(url: str, worker: int, count: int) -> tuple[int, list[str]]:
    """``count`` separate write transactions, each appending one chained audit record."""
    errors: list[str] = []
    done = 0
    store = MetadataStore(url)
    try:
        for i in range(count):
            try:
                with store.write() as s:
                    append(
                        s,
                        actor=f"worker-{worker}",
                        project="default",
                        action="contract.write",
                        resource=f"row:{worker}:{i}",
                        outcome="ok",
                        detail={"i": i},
                    )
                done += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        store.dispose()
    return done, errors[:5]
