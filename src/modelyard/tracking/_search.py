"""Run search: a small filter grammar compiled to SQLAlchemy expressions.

Hand-written tokenizer and recursive-descent parser: no ``eval`` and no SQL built from strings, so a
filter can only ever become bound parameters in EXISTS subqueries. (MLflow's grammar rides on sqlparse;
ours is small enough to own, and owning it gives errors that name the position.)

    expr    := and_expr ("or" and_expr)*
    and_expr:= atom ("and" atom)*
    atom    := "(" expr ")" | ident op value | ident ["not"] "in" "(" value ("," value)* ")"
    ident   := (metrics|params|tags|attributes) "." (key | `quoted key`)  |  attribute name
    op      := = | != | < | <= | > | >= | like | ilike
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.functions import FunctionElement

from modelyard.core._models import Experiment, Run, RunLatestMetric, RunParam, RunTag
from modelyard.core._platform import Context, Platform
from modelyard.errors import UsageError
from modelyard.tracking._store import RunInfo, check_experiment, load_runs, reap_stale_runs

MAX_FILTER = 10_000
MAX_DEPTH = 50
ATTRIBUTES = {"status", "name", "start_time", "end_time", "user", "run_id", "id"}
_TIME_ATTRS = {"start_time", "end_time"}
_KINDS = {
    "metrics": "metrics",
    "metric": "metrics",
    "params": "params",
    "param": "params",
    "tags": "tags",
    "tag": "tags",
    "attributes": "attributes",
    "attribute": "attributes",
    "attr": "attributes",
}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(_NUM)
_TOKEN = re.compile(
    rf"""
    (?P<ws>\s+)
  | (?P<num>{_NUM})
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<punct>[(),])
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:`[^`]{{1,250}}`|[A-Za-z0-9_\-./]+))?)
    """,
    re.X,
)
_KEYWORDS = {"and", "or", "not", "in", "like", "ilike", "asc", "desc"}


@dataclass(frozen=True)
class Token:
    kind: str  # num, op, punct, str, ident, kw, end
    text: str
    pos: int  # 1-based character position, as the error message shows it


def _syntax(message: str, pos: int, source: str) -> UsageError:
    return UsageError(f"invalid filter at position {pos}: {message} (in {source[:200]!r})", position=pos)


def tokenize(source: str, *, lazy: bool = False) -> list[Token]:
    """Tokens and an end marker. ``lazy``: a lexing error becomes an "error" token that the parser raises
    when it gets there, so the first error from the left is the one reported."""
    out: list[Token] = []
    i = 0
    while i < len(source):
        m = _TOKEN.match(source, i)
        if m is None:
            ch = source[i]
            message = "unterminated string" if ch in "'\"" else f"unexpected character {ch!r}"
            if not lazy:
                raise _syntax(message, i + 1, source)
            out.append(Token("error", message, i + 1))
            return out
        kind = m.lastgroup or ""
        text = m.group()
        if kind == "ident" and text.lower() in _KEYWORDS:
            kind, text = "kw", text.lower()
        if kind != "ws":
            out.append(Token(kind, text, i + 1))
        i = m.end()
    out.append(Token("end", "", len(source) + 1))
    return out


@dataclass(frozen=True)
class Field:
    kind: str  # metrics, params, tags, attributes
    key: str


def parse_field(tok: Token, source: str) -> Field:
    if tok.kind != "ident":
        raise _syntax(
            f"expected a field such as metrics.<key>, params.<key>, tags.<key> or attributes.status, "
            f"got {tok.text or 'the end'!r}",
            tok.pos,
            source,
        )
    prefix, dot, key = tok.text.partition(".")
    if not dot:
        if prefix in ATTRIBUTES:
            return Field("attributes", "run_id" if prefix == "id" else prefix)
        raise _syntax(
            f"unknown field {prefix!r}: expected metrics.<key>, params.<key>, tags.<key> or "
            f"attributes.<{'|'.join(sorted(ATTRIBUTES - {'id'}))}>",
            tok.pos,
            source,
        )
    kind = _KINDS.get(prefix.lower())
    if kind is None:
        raise _syntax(
            f"unknown field prefix {prefix!r}: expected metrics, params, tags or attributes", tok.pos, source
        )
    if key.startswith("`"):
        key = key[1:-1]
    if kind == "attributes":
        if key not in ATTRIBUTES:
            raise _syntax(
                f"unknown attribute {key!r}: expected one of {', '.join(sorted(ATTRIBUTES - {'id'}))}",
                tok.pos,
                source,
            )
        key = "run_id" if key == "id" else key
    return Field(kind, key)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source, lazy=True)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        t = self.tokens[self.i]
        if t.kind == "error":
            raise _syntax(t.text, t.pos, self.source)
        return t

    def take(self) -> Token:
        t = self.tok
        self.i += 1
        return t

    def error(self, message: str, tok: Token | None = None) -> UsageError:
        t = tok or self.tok
        return _syntax(message, t.pos, self.source)

    # Each level returns (expression, the (kind, key) fields every matching run must have): a sort on a
    # metric that the filter already requires can then be an inner join, which lets the database walk the
    # (key, value) index in order instead of sorting every candidate.
    def parse(self) -> tuple[ColumnElement[bool], set[tuple[str, str]]]:
        expr = self.expr()
        if self.tok.kind != "end":
            raise self.error(f"expected 'and', 'or' or the end, got {self.tok.text!r}")
        return expr

    def expr(self) -> tuple[ColumnElement[bool], set[tuple[str, str]]]:
        parts = [self.and_expr()]
        while self.tok.kind == "kw" and self.tok.text == "or":
            self.take()
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return or_(*(e for e, _ in parts)), set.intersection(*(r for _, r in parts))

    def and_expr(self) -> tuple[ColumnElement[bool], set[tuple[str, str]]]:
        parts = [self.atom()]
        while self.tok.kind == "kw" and self.tok.text == "and":
            self.take()
            parts.append(self.atom())
        if len(parts) == 1:
            return parts[0]
        return and_(*(e for e, _ in parts)), set.union(*(r for _, r in parts))

    def atom(self) -> tuple[ColumnElement[bool], set[tuple[str, str]]]:
        if self.tok.kind == "punct" and self.tok.text == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"parentheses nested deeper than {MAX_DEPTH}")
            self.take()
            inner = self.expr()
            if self.tok.text != ")" or self.tok.kind != "punct":
                raise self.error(f"expected ')', got {self.tok.text or 'the end'!r}")
            self.take()
            self.depth -= 1
            return inner
        field_tok = self.take()
        fld = parse_field(field_tok, self.source)
        need = {(fld.kind, fld.key)}
        op_tok = self.take()
        if op_tok.kind == "kw" and op_tok.text == "not":
            nxt = self.take()
            if not (nxt.kind == "kw" and nxt.text == "in"):
                raise self.error("expected 'in' after 'not'", nxt)
            # like != : a run without the key (or with a NaN metric) matches neither
            return self.compare(fld, "not in", self.value_list(), op_tok), need
        if op_tok.kind == "kw" and op_tok.text == "in":
            return self.compare(fld, "in", self.value_list(), op_tok), need
        if op_tok.kind == "op" or (op_tok.kind == "kw" and op_tok.text in ("like", "ilike")):
            op = {"==": "=", "<>": "!="}.get(op_tok.text, op_tok.text)
            return self.compare(fld, op, [self.value()], op_tok), need
        raise self.error(
            f"expected a comparison (=, !=, <, <=, >, >=, like, ilike, in) after {field_tok.text!r}, "
            f"got {op_tok.text or 'the end'!r}",
            op_tok,
        )

    def value(self) -> Token:
        t = self.take()
        if t.kind not in ("num", "str"):
            raise self.error(f"expected a number or a quoted string, got {t.text or 'the end'!r}", t)
        return t

    def value_list(self) -> list[Token]:
        if not (self.tok.kind == "punct" and self.tok.text == "("):
            raise self.error("expected '(' to start the list after 'in'")
        self.take()
        values = [self.value()]
        while self.tok.kind == "punct" and self.tok.text == ",":
            self.take()
            values.append(self.value())
        if not (self.tok.kind == "punct" and self.tok.text == ")"):
            raise self.error(f"expected ',' or ')' in the list, got {self.tok.text or 'the end'!r}")
        self.take()
        return values

    def compare(self, fld: Field, op: str, values: list[Token], at: Token) -> ColumnElement[bool]:
        numeric = fld.kind == "metrics" or fld.key in _TIME_ATTRS
        if numeric:
            if op in ("like", "ilike"):
                raise self.error(f"{op} compares strings; {fld.kind}.{fld.key} is a number", at)
            bad = next((v for v in values if v.kind != "num"), None)
            if bad is not None:
                raise self.error(
                    f"{fld.kind}.{fld.key} is a number: compare it with a number, not {bad.text}", bad
                )
            nums: list[Any] = [float(v.text) for v in values]
            if fld.key in _TIME_ATTRS:  # epoch milliseconds, as MLflow has them
                try:
                    nums = [datetime.fromtimestamp(n / 1000, UTC) for n in nums]
                except (OverflowError, OSError, ValueError):
                    raise self.error("time out of range: expected epoch milliseconds", values[0]) from None
            return _condition(fld, op, nums)
        if op in ("<", "<=", ">", ">="):
            raise self.error(f"{fld.kind}.{fld.key} is a string: use =, !=, like, ilike or in", at)
        bad = next((v for v in values if v.kind != "str"), None)
        if bad is not None:
            raise self.error(f"{fld.kind}.{fld.key} is a string: quote the value, e.g. '{bad.text}'", bad)
        texts = [_unquote(v.text) for v in values]
        if op in ("like", "ilike") and re.search(r"(?<!\\)(\\\\)*\\$", texts[0]):
            lone = f"{op} pattern ends with a lone backslash (a backslash escapes the next character)"
            raise self.error(lone, values[0])
        if fld.kind == "params" and op in ("=", "!=", "in", "not in"):
            # A param logged as a float is stored as Python writes it (1e-4 -> '0.0001'): a number
            # literal also matches that spelling, so params.lr = '1e-4' finds lr=1e-4 either way.
            spelled = list(dict.fromkeys(s for t in texts for s in _number_spellings(t)))
            if len(spelled) > len(texts):
                return _condition(fld, "not in" if op in ("!=", "not in") else "in", spelled)
        return _condition(fld, op, texts)


def _number_spellings(text: str) -> list[str]:
    """``text`` and, for a number in exponent notation, how Python's ``str`` writes that float:
    '1e-4' -> ['1e-4', '0.0001'], '1e6' -> ['1e6', '1000000.0']. Other texts stay as written: '2.10' is
    a version and '01234' a postcode, not 2.1 and 1234."""
    if "e" not in text.lower() or not _NUMBER.fullmatch(text):
        return [text]
    x = float(text)
    return list(dict.fromkeys([text, str(x)])) if math.isfinite(x) else [text]


class _like(FunctionElement[bool]):
    """``col LIKE pattern``, case-sensitive on every backend. SQLite's LIKE ignores ASCII case (PostgreSQL's
    does not), so there it is GLOB with the pattern translated (third argument)."""

    type = Boolean()
    inherit_cache = True
    name = "like"


@compiles(_like)
def _like_sql(element: _like, compiler: Any, **kw: Any) -> str:
    col, pattern, _ = element.clauses
    return f"{compiler.process(col, **kw)} LIKE {compiler.process(pattern, **kw)}"


@compiles(_like, "sqlite")
def _glob_sql(element: _like, compiler: Any, **kw: Any) -> str:
    col, _, glob = element.clauses
    return f"{compiler.process(col, **kw)} GLOB {compiler.process(glob, **kw)}"


_GLOB = {"%": "*", "_": "?", "*": "[*]", "?": "[?]", "[": "[[]"}
_LITERAL = {"*": "[*]", "?": "[?]", "[": "[[]"}


def _glob(pattern: str) -> str:
    """The LIKE pattern as a GLOB one, backslash escaping the next character as in PostgreSQL's LIKE
    (``a\\_b`` matches ``a_b`` only). The parser refused a pattern that ends with a lone backslash."""
    out: list[str] = []
    escaped = False
    for c in pattern:
        if escaped:
            out.append(_LITERAL.get(c, c))
            escaped = False
        elif c == "\\":
            escaped = True
        else:
            out.append(_GLOB.get(c, c))
    return "".join(out)


def _case_sensitive_like(col: Any, pattern: str) -> ColumnElement[bool]:
    return _like(col, pattern, _glob(pattern))


def _apply(col: Any, op: str, values: list[Any]) -> ColumnElement[bool]:
    if op == "in":
        return col.in_(values)  # type: ignore[no-any-return]
    if op == "not in":
        return col.not_in(values)  # type: ignore[no-any-return]
    v = values[0]
    ops: dict[str, Callable[[], ColumnElement[bool]]] = {
        "=": lambda: col == v,
        "!=": lambda: col != v,
        "<": lambda: col < v,
        "<=": lambda: col <= v,
        ">": lambda: col > v,
        ">=": lambda: col >= v,
        "like": lambda: _case_sensitive_like(col, v),
        "ilike": lambda: col.ilike(v, escape="\\"),  # SQLite's LIKE has no escape unless told
    }
    return ops[op]()


def _condition(fld: Field, op: str, values: list[Any]) -> ColumnElement[bool]:
    if fld.kind == "attributes":
        col = {
            "status": Run.status,
            "name": Run.name,
            "start_time": Run.start_time,
            "end_time": Run.end_time,
            "user": Run.user,
            "run_id": Run.id,
        }[fld.key]
        if fld.key == "status":
            values = [v.upper() for v in values] if op in ("=", "!=", "in", "not in") else values
        return _apply(col, op, values)
    model: Any = {"metrics": RunLatestMetric, "params": RunParam, "tags": RunTag}[fld.kind]
    # The other table only ever appears as an uncorrelated IN subquery with bound values: the database
    # finds the matching run ids from the (key, value) index instead of probing once per run.
    return Run.id.in_(select(model.run_id).where(model.key == fld.key, _apply(model.value, op, values)))


def compile_filter(source: str | None) -> tuple[ColumnElement[bool] | None, set[tuple[str, str]]]:
    """The filter as a SQLAlchemy boolean expression over ``Run`` (None for no filter), and the fields
    every matching run has."""
    if source is None:
        return None, set()
    if not isinstance(source, str):
        raise UsageError(f"filter must be a string, got {type(source).__name__}")
    if not source.strip():
        return None, set()
    if len(source) > MAX_FILTER:
        raise UsageError(f"filter has {len(source)} characters; at most {MAX_FILTER} allowed")
    _check_text(source)
    return _Parser(source).parse()


def _check_text(source: str) -> None:
    """Refuse what no stored text holds and the database driver cannot send (it raised a raw error)."""
    if "\x00" in source:  # PostgreSQL refuses it in a query
        raise _syntax("NUL character", source.index("\x00") + 1, source)
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from an undecodable byte of argv
        bad = f"character {source[exc.start]!r} is not valid Unicode"
        raise _syntax(bad, exc.start + 1, source) from None


def compile_order_by(
    items: list[str] | tuple[str, ...] | None,
    required: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
) -> tuple[list[Any], list[Any]]:
    """(joins as (alias, on, outer), ORDER BY clauses) for MLflow-style items such as
    ``"metrics.rougeL DESC"``. Runs without the metric or param sort last; a field the filter requires
    (``required``) is joined inner, since every matching run has it."""
    joins: list[Any] = []
    clauses: list[Any] = []
    if isinstance(items, str):
        raise UsageError("order_by must be a list of strings such as ['metrics.loss ASC', 'start_time DESC']")
    for item in items or []:
        if not isinstance(item, str):
            raise UsageError(f"order_by items must be strings, got {type(item).__name__}")
        try:
            _check_text(item)
            toks = tokenize(item)
            fld = parse_field(toks[0], item)
            desc = False
            rest = toks[1:]
            if rest[0].kind == "kw" and rest[0].text in ("asc", "desc"):
                desc = rest[0].text == "desc"
                rest = rest[1:]
            if rest[0].kind != "end":
                raise _syntax(f"expected ASC, DESC or the end, got {rest[0].text!r}", rest[0].pos, item)
        except UsageError as exc:  # the filter's grammar, but the user gave no filter: name the option
            message = exc.message.replace("invalid filter", "invalid order_by item", 1)
            raise UsageError(message, **exc.details) from None
        if fld.kind == "attributes":
            col: Any = {
                "status": Run.status,
                "name": Run.name,
                "start_time": Run.start_time,
                "end_time": Run.end_time,
                "user": Run.user,
                "run_id": Run.id,
            }[fld.key]
        else:
            model: Any = {"metrics": RunLatestMetric, "params": RunParam, "tags": RunTag}[fld.kind]
            alias = aliased(model)
            joins.append(
                (
                    alias,
                    and_(alias.run_id == Run.id, alias.key == fld.key),
                    (fld.kind, fld.key) not in required,
                )
            )
            col = alias.value
        clauses.append((col.desc() if desc else col.asc()).nulls_last())
    return joins, clauses


MAX_RESULTS = 50_000


def search_runs(
    platform: Platform,
    ctx: Context,
    experiment: str | list[str] | None = None,
    filter: str | None = None,
    order_by: list[str] | None = None,
    max_results: int = 1000,
) -> list[RunInfo]:
    """Runs of ctx's project (optionally of some experiments) matching ``filter``, sorted by ``order_by``
    (then newest first), at most ``max_results``; params, tags and latest metrics are loaded in bulk."""
    if (
        isinstance(max_results, bool)
        or not isinstance(max_results, int)
        or not 1 <= max_results <= MAX_RESULTS
    ):
        raise UsageError(f"max_results must be an integer between 1 and {MAX_RESULTS:,}, got {max_results!r}")
    if experiment is not None and not isinstance(experiment, str | list | tuple):
        raise UsageError(f"experiment must be a name or a list of names, got {type(experiment).__name__}")
    names = [experiment] if isinstance(experiment, str) else list(experiment or [])
    for n in names:
        check_experiment(n)
    where, required = compile_filter(filter)
    joins, clauses = compile_order_by(order_by, required)
    platform.authorize(ctx, "run.read", f"project:{ctx.project}")
    reap_stale_runs(platform, ctx)
    q = select(Run, Experiment.name).join(Experiment, Experiment.id == Run.experiment_id)
    for alias, on, outer in joins:
        q = q.outerjoin(alias, on) if outer else q.join(alias, on)
    q = q.where(Run.project_id == ctx.project_id)
    if names:
        q = q.where(Experiment.name.in_(names))
    if where is not None:
        q = q.where(where)
    q = q.order_by(*clauses, Run.start_time.desc(), Run.id).limit(max_results)
    with platform.db.read() as s:
        rows = [(r, e) for r, e in s.execute(q)]
        return load_runs(s, rows)
