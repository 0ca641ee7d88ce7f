"""The filter grammar: valid queries, ordering, limits; injection attempts are syntax errors."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import func, select

from modelyard.core import Platform
from modelyard.core._models import Run as RunRow
from modelyard.errors import UsageError
from modelyard.tracking import Client


@pytest.fixture
def runs(client: Client) -> list[str]:
    ids = []
    for i, (lr, rouge) in enumerate([("1e-4", 0.35), ("1e-4", 0.25), ("1e-3", 0.5), ("3e-4", 0.31)]):
        with client.start_run(
            "search",
            name=f"r{i}",
            params={"lr": lr, "model": "t5-small"},
            tags={"stage": f"s{i % 2}"},
            capture=False,
        ) as run:
            run.log_metrics({"rougeL": rouge, "loss": 1 - rouge}, step=i)
        ids.append(run.id)
        time.sleep(0.002)  # distinct start times for the default order
    with client.start_run("elsewhere", params={"lr": "1e-4"}, capture=False) as run:
        run.log_metric("rougeL", 0.9)
    return ids


def names(
    client: Client, filt: str | None = None, order_by: list[str] | None = None, **kw: object
) -> list[str]:
    return [r.name for r in client.search_runs("search", filter=filt, order_by=order_by, **kw)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("filt", "expected"),
    [
        ("metrics.rougeL > 0.3 and params.lr = '1e-4'", {"r0"}),
        ("metrics.rougeL > 0.3", {"r0", "r2", "r3"}),
        ('metrics.rougeL >= 0.5 or params.lr = "3e-4"', {"r2", "r3"}),
        ("(metrics.rougeL < 0.3 or metrics.rougeL > 0.4) and tags.stage = 's1'", {"r1"}),
        ("params.lr IN ('1e-3', '3e-4')", {"r2", "r3"}),
        ("params.lr not in ('1e-3', '3e-4')", {"r0", "r1"}),
        ("params.model LIKE 't5-%'", {"r0", "r1", "r2", "r3"}),
        ("params.model ILIKE 'T5-SMALL'", {"r0", "r1", "r2", "r3"}),
        ("params.lr != '1e-4'", {"r2", "r3"}),
        ("metrics.`rougeL` = 0.5", {"r2"}),
        ("metrics.missing > 0", set()),
        ("attributes.status = 'finished' and attributes.name = 'r3'", {"r3"}),
        ("status = 'FINISHED' and name like 'r_'", {"r0", "r1", "r2", "r3"}),
        ("attributes.start_time > 0", {"r0", "r1", "r2", "r3"}),
        ("metrics.loss <= 0.5", {"r2"}),
        ("metrics.rougeL in (0.25, 0.35)", {"r0", "r1"}),
    ],
)
def test_valid_filters(client: Client, runs: list[str], filt: str, expected: set[str]) -> None:
    assert set(names(client, filt)) == expected


def test_a_param_logged_as_a_number_matches_its_other_spellings(client: Client) -> None:
    # Python stores 1e-4 as '0.0001': the README's filter spelling must still find it, while texts that
    # merely look like numbers (versions, postcodes) keep matching exactly.
    for name, params in [
        ("f", {"lr": 1e-4, "v": "2.10", "zip": "01234"}),
        ("s", {"lr": "1e-4", "v": "2.1", "zip": "1234"}),
        ("o", {"lr": 1e-3, "v": "3", "zip": "x"}),
        ("t", {"lr": "fast", "v": "x", "zip": "y"}),
    ]:
        with client.start_run("spell", name=name, params=params, capture=False):
            pass

    def found(filt: str) -> set[str]:
        return {r.name for r in client.search_runs("spell", filter=filt)}

    assert found("params.lr = '1e-4'") == {"f", "s"}
    assert found("params.lr = '0.0001'") == {"f"}  # the text '1e-4' is not rewritten, only the literal
    assert found("params.lr != '1e-4'") == {"o", "t"}
    assert found("params.lr in ('1e-4', '1E-3')") == {"f", "s", "o"}
    assert found("params.lr not in ('1e-4')") == {"o", "t"}
    assert found("params.v = '2.10'") == {"f"} and found("params.v = '2.1'") == {"s"}
    assert found("params.zip = '01234'") == {"f"} and found("params.zip != '1234'") == {"f", "o", "t"}
    assert found("params.lr = 'fast'") == {"t"}
    assert found("params.lr like '1e%'") == {"s"}  # patterns stay text


def test_order_by_and_max_results(client: Client, runs: list[str]) -> None:
    assert names(client, order_by=["metrics.rougeL DESC"]) == ["r2", "r0", "r3", "r1"]
    assert names(client, order_by=["metrics.rougeL"]) == ["r1", "r3", "r0", "r2"]
    assert names(client, order_by=["params.lr ASC", "metrics.rougeL DESC"]) == ["r2", "r0", "r1", "r3"]
    assert names(client) == ["r3", "r2", "r1", "r0"]  # newest first
    assert names(client, order_by=["attributes.start_time"]) == ["r0", "r1", "r2", "r3"]
    assert names(client, "metrics.rougeL > 0.3", ["metrics.rougeL DESC"], max_results=2) == ["r2", "r0"]
    assert len(client.search_runs()) == 5  # every experiment of the project
    assert len(client.search_runs(["search", "elsewhere"])) == 5
    found = client.search_runs("search", filter="metrics.rougeL > 0.45")
    assert found[0].params == {"lr": "1e-3", "model": "t5-small"} and found[0].tags == {"stage": "s0"}


@pytest.mark.parametrize(
    ("filt", "position", "what"),
    [
        ("params.lr = '1e-4'; DROP TABLE runs", 19, "unexpected character ';'"),
        ("params.lr = ''; DROP TABLE runs; --'", 15, "unexpected character ';'"),
        ("'; DROP TABLE runs", 1, "unterminated string"),
        ("__import__('os').system('rm -rf /')", 1, "unknown field '__import__'"),
        ("metrics.x > 1 or 1=1", 18, "expected a field"),
        ("metrics.rougeL > 0.3 and", 25, "expected a field"),
        ("metrics.rougeL >> 0.3", 17, "expected a number"),
        ("metrics.rougeL > 'a'", 18, "is a number"),
        ("params.lr = 1e-4", 13, "quote the value"),
        ("params.lr > '1'", 11, "is a string"),
        ("metrics.rougeL like '%'", 16, "compares strings"),
        ("(metrics.x > 1", 15, "expected ')'"),
        ("runs.x = 1", 1, "unknown field prefix 'runs'"),
        ("attributes.password = 'x'", 1, "unknown attribute"),
        ("metrics.x > 1 metrics.y > 2", 15, "expected 'and', 'or'"),
        ("params.lr in '1'", 14, "expected '('"),
        ("params.lr = 'a' UNION SELECT * FROM tokens", 17, "expected 'and', 'or'"),
    ],
)
def test_bad_filters_are_syntax_errors_naming_the_position(
    client: Client, runs: list[str], filt: str, position: int, what: str
) -> None:
    with client.platform.db.read() as s:
        before = s.scalar(select(func.count()).select_from(RunRow))
    with pytest.raises(UsageError, match=f"position {position}: .*{re.escape(what)}") as err:
        client.search_runs("search", filter=filt)
    assert err.value.details["position"] == position
    with client.platform.db.read() as s:
        assert s.scalar(select(func.count()).select_from(RunRow)) == before


def test_deep_nesting_and_huge_filters_are_refused(client: Client, runs: list[str]) -> None:
    with pytest.raises(UsageError, match="nested deeper"):
        client.search_runs(filter="(" * 100 + "metrics.x > 1" + ")" * 100)
    with pytest.raises(UsageError, match="at most"):
        client.search_runs(filter="metrics.x > 1 or " * 1000 + "metrics.x > 1")


@pytest.mark.parametrize("bad", [0, -1, 50_001, "10", True, 1.5])
def test_max_results_is_bounded(client: Client, bad: object) -> None:
    with pytest.raises(UsageError, match="max_results"):
        client.search_runs(max_results=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "order", [["metrics.x sideways"], ["drop table"], ["metrics.x; --"], "metrics.x", [1]]
)
def test_bad_order_by(client: Client, order: object) -> None:
    with pytest.raises(UsageError):
        client.search_runs(order_by=order)  # type: ignore[arg-type]


def test_negations_agree_and_like_is_case_sensitive_on_every_backend(any_platform: Platform) -> None:
    """`!=` and `not in` match the same runs (a run without the key, or with a NaN metric, matches
    neither), `like` is case-sensitive on SQLite as on PostgreSQL (`ilike` is not), and a NUL in a filter
    is a syntax error, not a database error (helper-24)."""
    with Client(platform=any_platform) as client:
        for name, params, metrics in [
            ("a", {"opt": "adam"}, {"loss": 0.5}),
            ("b", {"opt": "Adam"}, {"loss": 0.7}),
            ("c", {}, {"loss": float("nan")}),
            ("d", {"opt": "sgd_1*"}, {}),
        ]:
            with client.start_run("neg", name=name, params=params, capture=False) as run:
                run.log_metrics(metrics)

        def found(filt: str) -> set[str]:
            return {r.name for r in client.search_runs("neg", filter=filt)}  # type: ignore[misc]

        assert found("params.opt != 'adam'") == found("params.opt not in ('adam')") == {"b", "d"}
        assert found("metrics.loss != 0.5") == found("metrics.loss not in (0.5)") == {"b"}
        assert found("params.opt like 'adam'") == {"a"} and found("params.opt like 'A%'") == {"b"}
        assert found("params.opt ilike 'ADAM'") == {"a", "b"}
        assert found("status like 'fin%'") == set() and found("status like 'FIN%'") == {"a", "b", "c", "d"}
        assert found("params.opt like 'sgd__*'") == {"d"} and found("params.opt like 's[g]%'") == set()
        with pytest.raises(UsageError, match="position 16: NUL"):
            client.search_runs("neg", filter="params.opt = 'a\x00'")
        # A lone surrogate (an undecodable byte of a shell argument) went to the driver: UnicodeEncodeError;
        # so did a NUL or a surrogate in an order_by key (PostgreSQL: DataError).
        with pytest.raises(UsageError, match=r"position 18: character '\\udce9' is not valid Unicode"):
            client.search_runs("neg", filter="params.opt = 'caf\udce9'")
        for bad in ("\x00", "\udce9"):
            with pytest.raises(UsageError, match="invalid order_by item at position 10"):
                client.search_runs("neg", order_by=[f"params.`a{bad}`"])


def test_like_backslash_escapes_the_same_on_every_backend(any_platform: Platform) -> None:
    """A backslash in a like/ilike pattern escapes the next character on SQLite as on PostgreSQL (SQLite's
    GLOB and LIKE took it literally, so `a\\_b` also matched `a\\xb` there), and a pattern ending with a
    lone backslash is a syntax error, not a database error."""
    with Client(platform=any_platform) as client:
        for name, value in [("u", "a_b"), ("x", "axb"), ("s", "a\\b"), ("p", "a%b"), ("q", "A_B")]:
            with client.start_run("esc", name=name, params={"p": value}, capture=False):
                pass

        def found(filt: str) -> set[str]:
            return {r.name for r in client.search_runs("esc", filter=filt)}  # type: ignore[misc]

        # In a filter's quoted string `\\` is one backslash, so the patterns are a\_b, a\%b and a\\b.
        assert found(r"params.p like 'a_b'") == {"u", "x", "s", "p"}
        assert found(r"params.p like 'a\\_b'") == {"u"}
        assert found(r"params.p like 'a\\%b'") == {"p"}
        assert found(r"params.p like 'a\\\\b'") == {"s"}
        assert found(r"params.p ilike 'A\\_B'") == {"u", "q"}
        assert found(r"params.p ilike 'a\\\\%'") == {"s"}
        for bad in (r"params.p like 'a\\'", r"params.p ilike '\\'"):
            with pytest.raises(UsageError, match="lone backslash"):
                client.search_runs("esc", filter=bad)


def test_a_quote_inside_a_literal_is_escaped_or_written_in_the_other_quotes(any_platform: Platform) -> None:
    """`'it\\'s'` and `"it's"` find it's; SQL's doubled quote is not the grammar's: `'it''s'` is two strings,
    a syntax error at the second, never a different query."""
    with Client(platform=any_platform) as client:
        for name, value in [("q", "it's"), ("d", 'say "hi"'), ("n", "its")]:
            with client.start_run("quotes", name=name, params={"p": value}, capture=False):
                pass

        def found(filt: str) -> set[str]:
            return {r.name for r in client.search_runs("quotes", filter=filt)}  # type: ignore[misc]

        assert found(r"params.p = 'it\'s'") == found('params.p = "it\'s"') == {"q"}
        assert found(r'params.p = "say \"hi\""') == found("params.p = 'say \"hi\"'") == {"d"}
        with pytest.raises(UsageError, match=r"position 16: expected 'and', 'or' or the end, got \"'s'\""):
            client.search_runs("quotes", filter="params.p = 'it''s'")
