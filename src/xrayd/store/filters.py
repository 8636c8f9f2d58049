"""X-Ray filter expressions (the developer guide's "Using filter expressions"): parsed into a
tree that is both compiled to SQL on the ``traces t`` table and evaluated on a whole trace
(``summary.Trace``). Pure: text in.

Each condition compiles to two SQL conditions: ``sure`` (a trace that satisfies it matches)
and ``maybe`` (a trace that matches satisfies it). Where the indexed columns say everything,
both are the same and the store answers from SQL alone; otherwise the traces that are
``maybe`` but not ``sure`` are checked on their documents (root causes, edges, a root whose
parent was never received...). ``NOT`` swaps the two.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xrayd.store.schema import buckets_sql

MAX_EXPRESSION = 2000
MAX_NESTING = 32  # parentheses, NOT/!, braces and group references inside each other
MAX_GROUP_DEPTH = 4

GroupResolver = Callable[[str], "str | None"]


class FilterError(Exception):
    """A filter expression that cannot be parsed or uses what is not supported."""


@dataclass(frozen=True)
class Token:
    kind: str  # str, num, ident, op, end
    text: str
    value: Any
    pos: int


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.:\-]*)
  | (?P<op>&&|\|\||!=|<=|>=|[=<>!(){}\[\],])
""", re.VERBOSE)

_COMPARE = {"=", "!=", "<", "<=", ">", ">="}
_STRING_OPS = {"CONTAINS", "BEGINSWITH", "ENDSWITH"}

# Keywords by where they apply: the trace, a service node (service() {}), an edge (edge() {}),
# and the three lists of a root cause (rootcause.<kind>.service|entity|exception {}).
BOOLEAN, NUMBER, STRING = "boolean", "number", "string"
_TRACE = {
    "ok": BOOLEAN, "error": BOOLEAN, "fault": BOOLEAN, "throttle": BOOLEAN, "partial": BOOLEAN,
    "inferred": BOOLEAN, "responsetime": NUMBER, "duration": NUMBER, "http.status": NUMBER,
    "http.url": STRING, "http.method": STRING, "http.useragent": STRING,
    "http.clientip": STRING, "user": STRING, "name": STRING, "type": STRING,
    "availabilityzone": STRING, "instance.id": STRING, "resource.arn": STRING,
}
_NODE = {
    "ok": BOOLEAN, "error": BOOLEAN, "fault": BOOLEAN, "throttle": BOOLEAN, "partial": BOOLEAN,
    "root": BOOLEAN, "inferred": BOOLEAN, "responsetime": NUMBER, "duration": NUMBER,
    "http.status": NUMBER, "http.url": STRING, "http.method": STRING,
    "http.useragent": STRING, "http.clientip": STRING, "user": STRING, "name": STRING,
    "type": STRING, "account.id": STRING,
}
_EDGE = {k: v for k, v in _NODE.items() if k not in ("root", "inferred", "type", "account.id")}
_POSITION = {"first": BOOLEAN, "last": BOOLEAN, "index": NUMBER}
_RC_SERVICE = {"name": STRING, "type": STRING, "inferred": BOOLEAN, "account.id": STRING,
               **_POSITION}
_RC_ENTITY = {"name": STRING, "remote": BOOLEAN, **_POSITION}
_RC_ENTITY_TIME = {**_RC_ENTITY, "coverage": NUMBER}
_RC_EXCEPTION = {"name": STRING, "message": STRING, **_POSITION}
_ONLY_IN = {
    "root": "service() { ... }", "first": "rootcause.* { ... }", "last": "rootcause.* { ... }",
    "index": "rootcause.* { ... }", "remote": "rootcause.<kind>.entity { ... }",
    "coverage": "rootcause.responsetime.entity { ... }", "message": "rootcause.*.exception",
    "account.id": "service() { ... } and rootcause.*.service { ... }",
}
_ROOT_CAUSES = ("fault", "error", "responsetime")

# Trace keywords the trace row answers: exactly when the root segment is known (has no
# parent), else the documents decide.
_ROOT_COLUMNS = {
    "responsetime": "(t.root_end - t.root_start)", "http.status": "t.http_status",
    "http.url": "t.http_url", "http.method": "t.http_method", "name": "t.root_name",
}
_KNOWN_ROOT = "t.root_start IS NOT NULL"


# --- the tree ------------------------------------------------------------------------------
@dataclass
class Sql:
    sure: str
    maybe: str
    sure_params: list[Any] = field(default_factory=list)
    maybe_params: list[Any] = field(default_factory=list)

    @classmethod
    def exact(cls, sql: str, params: list[Any] | None = None) -> Sql:
        return cls(sql, sql, list(params or ()), list(params or ()))

    @property
    def is_exact(self) -> bool:
        return self.sure == self.maybe and self.sure_params == self.maybe_params


UNKNOWN = Sql("0", "1")


class Node:
    def match(self, obj: Any) -> bool:
        raise NotImplementedError

    def sql(self) -> Sql:
        return UNKNOWN


@dataclass
class And(Node):
    parts: list[Node]

    def match(self, obj: Any) -> bool:
        return all(p.match(obj) for p in self.parts)

    def sql(self) -> Sql:
        return _joined(" AND ", self.parts)


@dataclass
class Or(Node):
    parts: list[Node]

    def match(self, obj: Any) -> bool:
        return any(p.match(obj) for p in self.parts)

    def sql(self) -> Sql:
        return _joined(" OR ", self.parts)


def _joined(joiner: str, nodes: list[Node]) -> Sql:
    parts = [p.sql() for p in nodes]
    return Sql("(" + joiner.join(p.sure for p in parts) + ")",
               "(" + joiner.join(p.maybe for p in parts) + ")",
               [x for p in parts for x in p.sure_params],
               [x for p in parts for x in p.maybe_params])


@dataclass
class Not(Node):
    inner: Node

    def match(self, obj: Any) -> bool:
        return not self.inner.match(obj)

    def sql(self) -> Sql:
        inner = self.inner.sql()
        return Sql(f"(NOT {inner.maybe})", f"(NOT {inner.sure})", inner.maybe_params,
                   inner.sure_params)


@dataclass
class Compare(Node):
    """``keyword [op value]`` on the object in context (a bare keyword: true / is set)."""

    keyword: str
    kind: str
    op: str | None = None
    value: Any = None

    def test(self, found: Any) -> bool:
        op, value = self.op, self.value
        if op is None:
            return found is True if self.kind == BOOLEAN else found is not None
        if found is None or (type(found) is bool and self.kind != BOOLEAN):
            return op == "!="
        if self.kind == STRING:
            found, wanted = str(found), str(value)
            if op in _STRING_OPS:
                found, wanted = found.lower(), wanted.lower()
                return (wanted in found if op == "CONTAINS" else found.startswith(wanted)
                        if op == "BEGINSWITH" else found.endswith(wanted))
            same = found == wanted or (self.keyword == "type" and found.startswith(
                wanted + "::"))  # the guide writes "AWS::DynamoDB" for AWS::DynamoDB::Table
            return same == (op == "=")
        if self.kind == BOOLEAN:
            return (bool(found) == value) == (op == "=")
        return _numeric(float(found), op, float(value))

    def match(self, obj: Any) -> bool:
        if hasattr(obj, "values"):  # the trace: several values for some keywords
            found = obj.values(self.keyword)
            if self.op == "!=":
                return not any(Compare(self.keyword, self.kind, "=", self.value).test(v)
                               for v in found)
            return any(self.test(v) for v in found)
        return self.test(obj.get(self.keyword))

    def sql(self) -> Sql:
        keyword = self.keyword
        if keyword == "duration" and self.op is not None:
            return Sql.exact(f"coalesce((t.end - t.start) {self.op} ?, 0)", [self.value])
        if keyword == "partial":
            return Sql.exact(_boolean_sql(
                "EXISTS (SELECT 1 FROM segments p WHERE p.tpk = t.pk AND p.in_progress = 1)",
                self.op, self.value))
        if keyword == "throttle":
            return Sql.exact(_boolean_sql("t.throttle = 1", self.op, self.value))
        if keyword in ("fault", "error", "ok"):
            cond = ("(t.error = 0 AND t.fault = 0)" if keyword == "ok"
                    else f"t.{keyword} = 1")
            return _rooted(_boolean_sql(cond, self.op, self.value), [])
        if keyword in _ROOT_COLUMNS:
            cond, params = _column_sql(_ROOT_COLUMNS[keyword], self.kind, self.op, self.value)
            return _rooted(cond, params)
        if keyword == "user" and self.op not in (None, "!="):
            cond, params = _column_sql("t.user", self.kind, self.op, self.value)
            return Sql(cond, "t.user IS NOT NULL", params, [])
        return UNKNOWN


def _rooted(cond: str, params: list[Any]) -> Sql:
    return Sql(f"({_KNOWN_ROOT} AND {cond})", f"(NOT {_KNOWN_ROOT} OR {cond})", params,
               list(params))


def _boolean_sql(cond: str, op: str | None, value: Any) -> str:
    wanted = True if op is None else (value == (op == "="))
    return cond if wanted else f"(NOT {cond})"


def _column_sql(column: str, kind: str, op: str | None, value: Any) -> tuple[str, list[Any]]:
    if op is None:
        return f"{column} IS NOT NULL", []
    if op in _STRING_OPS:
        return f"coalesce({column} LIKE ? ESCAPE '\\', 0)", [_like(op, value)]
    if op == "!=":
        return f"coalesce({column} != ?, 1)", [value]
    return f"coalesce({column} {op} ?, 0)", [value]


def _numeric(found: float, op: str, value: float) -> bool:
    return {"=": found == value, "!=": found != value, "<": found < value,
            "<=": found <= value, ">": found > value, ">=": found >= value}[op]


@dataclass
class Annotation(Node):
    key: str
    op: str | None
    typ: str  # s, n, b
    value: Any

    def match(self, obj: Any) -> bool:
        op, wanted = self.op, self.value
        for found in obj.annotation_values(self.key):
            kind = "b" if type(found) is bool else "s" if type(found) is str else "n"
            if op is None:
                return True
            plain = found if kind == "s" else int(found) if kind == "b" else float(found)
            if op == "!=":
                if kind != self.typ or plain != wanted:
                    return True
                continue
            if kind != self.typ:
                continue
            if op in _STRING_OPS:
                ok = Compare("", STRING, op, wanted).test(found)
            elif kind == "s":
                ok = _string_compare(found, op, wanted)
            else:
                ok = _numeric(float(plain), op, float(wanted))
            if ok:
                return True
        return False

    def sql(self) -> Sql:
        sub = (f"t.pk IN (SELECT tpk FROM annotations WHERE bucket IN ({buckets_sql()}) "
               "AND key = ?")
        if self.op is None:
            return Sql.exact(sub + ")", [self.key])
        if self.op in _STRING_OPS:
            return Sql.exact(sub + " AND typ = 's' AND val LIKE ? ESCAPE '\\')",
                             [self.key, _like(self.op, self.value)])
        if self.op == "!=":
            return Sql.exact(sub + " AND NOT (typ = ? AND val = ?))",
                             [self.key, self.typ, self.value])
        return Sql.exact(sub + f" AND typ = ? AND val {self.op} ?)",
                         [self.key, self.typ, self.value])


def _string_compare(found: str, op: str, value: str) -> bool:
    return {"=": found == value, "<": found < value, "<=": found <= value,
            ">": found > value, ">=": found >= value}.get(op, False)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(text: str) -> str:
    """Case folded as SQLite's NOCASE does: ASCII letters only."""
    return text.translate(_ASCII_LOWER)


@dataclass
class Selector:
    """A service chosen by name (case-insensitive) or by id(name:, type:, account.id:)."""

    name: str | None = None
    type: str | None = None
    account: str | None = None

    def accepts(self, service: Any) -> bool:
        if self.name is not None and _fold(service.name) != _fold(self.name):
            return False
        if self.type is not None and (service.type or "") != self.type:
            return False
        return self.account is None or service.account == self.account

    @property
    def by_name_only(self) -> bool:
        return self.type is None and self.account is None


# A service of that name, in any case (the index has names as sent; JSON keys end at a NUL).
_PRESENT = ("(EXISTS (SELECT 1 FROM services v WHERE v.name = ? AND v.tpk = t.pk) OR EXISTS "
            "(SELECT 1 FROM json_each(t.services) j WHERE j.key = ? COLLATE NOCASE))")


@dataclass
class ServiceFilter(Node):
    selector: Selector
    inner: Node | None

    def match(self, obj: Any) -> bool:
        return any(self.selector.accepts(s) and (self.inner is None or self.inner.match(s))
                   for s in obj.services)

    def sql(self) -> Sql:
        name = self.selector.name
        present, present_params = (_PRESENT, [name, name]) if name is not None else ("1", [])
        inner = self.inner
        flags = "1" if inner is None else _flags_sql(inner, "s.error", "s.fault", "s.throttle")
        calls = "1" if inner is None else _flags_sql(
            inner, "(c.value ->> 6)", "(c.value ->> 7)", "(c.value ->> 8)")
        if flags is None or calls is None or not self.selector.by_name_only:
            return Sql("0", present, [], present_params)
        # The nodes: segments (their own flags), and calls that no segment of the trace
        # continues (inferred nodes, the call's flags). The cheap name look-up goes first.
        named = "AND s.name = ? COLLATE NOCASE " if name is not None else ""
        # A call is named by its subsegment and by its node (a DynamoDB call to table
        # "orders" is service("DynamoDB") and service("orders")), as rows.py indexes it.
        called = ("AND ((c.value ->> 2) = ? COLLATE NOCASE OR (c.value ->> 9) = ? "
                  "COLLATE NOCASE) " if name is not None else "")
        params = [name] if name is not None else []
        segment = ("EXISTS (SELECT 1 FROM segments s WHERE s.tpk = t.pk AND s.kind = 'segment' "
                   f"{named}AND {flags})")
        inferred = ("EXISTS (SELECT 1 FROM segments s, json_each(s.calls) c WHERE s.tpk = t.pk "
                    f"AND s.calls IS NOT NULL {called}AND {calls} AND NOT EXISTS (SELECT 1 FROM "
                    "segments d WHERE d.tpk = t.pk AND d.parent_id = (c.value ->> 0)))")
        return Sql.exact(f"({present} AND ({segment} OR {inferred}))",
                         present_params + params * 3)


def _flags_sql(node: Node, error: str, fault: str, throttle: str) -> str | None:
    """SQL for a sub-filter made only of fault/error/throttle/ok, else None."""
    if isinstance(node, And | Or):
        parts = [_flags_sql(p, error, fault, throttle) for p in node.parts]
        if any(p is None for p in parts):
            return None
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(p for p in parts if p) + ")"
    if isinstance(node, Not):
        inner = _flags_sql(node.inner, error, fault, throttle)
        return None if inner is None else f"(NOT {inner})"
    if isinstance(node, Compare) and node.kind == BOOLEAN:
        cond = {"fault": f"{fault} = 1", "error": f"{error} = 1",
                "throttle": f"{throttle} = 1",
                "ok": f"({error} = 0 AND {fault} = 0 AND {throttle} = 0)"}.get(node.keyword)
        return None if cond is None else _boolean_sql(cond, node.op, node.value)
    return None


@dataclass
class EdgeFilter(Node):
    source: Selector
    target: Selector
    inner: Node | None

    def match(self, obj: Any) -> bool:
        return any(self.source.accepts(e.source) and self.target.accepts(e.target)
                   and (self.inner is None or self.inner.match(e)) for e in obj.edges)

    def sql(self) -> Sql:
        names = [s.name for s in (self.source, self.target) if s.name is not None]
        if not names:
            return UNKNOWN
        present = " AND ".join([_PRESENT] * len(names))
        return Sql("0", f"({present})", [], [x for name in names for x in (name, name)])


@dataclass
class RootCause(Node):
    kind: str  # fault, error, responsetime
    level: str  # service, entity, exception
    inner: Node | None

    def match(self, obj: Any) -> bool:
        for cause in obj.root_causes(self.kind):
            for item in _items(cause, self.level):
                if self.inner is None or self.inner.match(item):
                    return True
        return False

    def sql(self) -> Sql:
        # A service named in the sub-filter (``{ name = "x" and ... }``) is in the trace.
        names = _required_names(self.inner) if self.level == "service" else []
        present = "".join(f"{_PRESENT} AND " for _ in names)
        named = [x for name in names for x in (name, name)]
        if self.kind == "responsetime":
            return Sql("0", f"({present}t.root_end IS NOT NULL)", [], named)
        # A fault (error) root cause needs a faulted (errored) segment or call.
        flag = 2 if self.kind == "fault" else 1
        column = "s.fault" if self.kind == "fault" else "s.error"
        return Sql("0", f"({present}EXISTS (SELECT 1 FROM segments s WHERE s.tpk = t.pk AND "
                        f"({column} = 1 OR (s.calls IS NOT NULL AND EXISTS (SELECT 1 FROM "
                        f"json_each(s.calls) c WHERE (c.value ->> {5 + flag}) = 1)))))", [], named)


def _required_names(node: Node | None) -> list[str]:
    """The names a sub-filter requires (``name = "x"``, alone or in an AND)."""
    if isinstance(node, And):
        return [n for part in node.parts for n in _required_names(part)]
    if isinstance(node, Compare) and node.keyword == "name" and node.op == "=":
        return [str(node.value)]
    return []


class _Item:
    """An element of a root cause's list, with its place in the list."""

    def __init__(self, fields: dict[str, Any], index: int, count: int) -> None:
        self.fields = fields
        self.index = index
        self.count = count

    def get(self, keyword: str) -> Any:
        if keyword == "index":
            return self.index
        if keyword == "first":
            return self.index == 0
        if keyword == "last":
            return self.index == self.count - 1
        return self.fields.get(keyword)


def _items(cause: dict[str, Any], level: str) -> list[_Item]:
    values: list[dict[str, Any]] = []
    for service in cause["Services"]:
        if level == "service":
            values.append({"name": service["Name"], "type": service.get("Type"),
                           "inferred": service["Inferred"],
                           "account.id": service.get("AccountId")})
            continue
        for entity in service["EntityPath"]:
            if level == "entity":
                values.append({"name": entity["Name"], "remote": entity["Remote"],
                               "coverage": entity.get("Coverage")})
            else:
                values.extend({"name": e.get("Name"), "message": e.get("Message")}
                              for e in entity.get("Exceptions", ()))
    return [_Item(v, i, len(values)) for i, v in enumerate(values)]


# --- the parser ----------------------------------------------------------------------------
def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_EXPRESSION:
        raise FilterError(f"Filter expression longer than {MAX_EXPRESSION} characters")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos] == "#":
                raise FilterError("rootcause.json (JSON root cause objects) is not supported "
                                  "by xrayd")
            raise FilterError(f"Unexpected character {text[pos]!r} at position {pos}")
        kind = match.lastgroup or ""
        raw = match.group()
        if kind == "str":
            tokens.append(Token("str", raw, re.sub(r"\\(.)", r"\1", raw[1:-1]), pos))
        elif kind == "num":
            tokens.append(Token("num", raw, float(raw), pos))
        elif kind in ("ident", "op"):
            tokens.append(Token(kind, raw, raw, pos))
        pos = match.end()
    tokens.append(Token("end", "", None, pos))
    return tokens


_CONTEXT_NAMES = {"trace": "a trace", "node": "service() { ... }", "edge": "edge() { ... }",
                  "rc_service": "rootcause.*.service { ... }",
                  "rc_entity": "rootcause.*.entity { ... }",
                  "rc_entity_time": "rootcause.responsetime.entity { ... }",
                  "rc_exception": "rootcause.*.exception { ... }"}
_CONTEXTS = {"trace": _TRACE, "node": _NODE, "edge": _EDGE, "rc_service": _RC_SERVICE,
             "rc_entity": _RC_ENTITY, "rc_entity_time": _RC_ENTITY_TIME,
             "rc_exception": _RC_EXCEPTION}


class _Parser:
    def __init__(self, text: str, groups: GroupResolver | None, group_depth: int) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0
        self.groups = groups
        self.group_depth = group_depth

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def word(self, *words: str) -> bool:
        return self.tok.kind == "ident" and self.tok.text.upper() in words

    def op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def expect_op(self, op: str) -> None:
        if not self.op(op):
            raise self.fail(f"Expected {op!r}")
        self.i += 1

    def fail(self, what: str) -> FilterError:
        token = self.tok
        shown = token.text or "end of expression"
        return FilterError(f"{what} at position {token.pos} (found {shown!r})")

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise FilterError(f"Filter expression nested too deeply: at most {MAX_NESTING} "
                              "levels of parentheses, braces and NOT")

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise FilterError("Empty filter expression")
        node = self.or_expr("trace")
        if self.tok.kind != "end":
            raise self.fail("Unexpected token")
        return node

    def or_expr(self, ctx: str) -> Node:
        parts = [self.and_expr(ctx)]
        while self.word("OR") or self.op("||"):
            self.i += 1
            parts.append(self.and_expr(ctx))
        return parts[0] if len(parts) == 1 else Or(parts)

    def and_expr(self, ctx: str) -> Node:
        parts = [self.not_expr(ctx)]
        while True:
            if self.word("AND") or self.op("&&"):
                self.i += 1
            elif not ((self.tok.kind == "ident" and not self.word("OR"))
                      or self.op("!", "(")):
                break  # else two conditions side by side: AND (``ok !partial duration <3``)
            parts.append(self.not_expr(ctx))
        return parts[0] if len(parts) == 1 else And(parts)

    def not_expr(self, ctx: str) -> Node:
        if self.word("NOT") or self.op("!"):
            self.i += 1
            self.deeper()
            node: Node = Not(self.not_expr(ctx))
            self.depth -= 1
            return node
        if self.op("("):
            self.i += 1
            self.deeper()
            node = self.or_expr(ctx)
            self.expect_op(")")
            self.depth -= 1
            return node
        return self.predicate(ctx)

    def braces(self, ctx: str) -> Node | None:
        if not self.op("{"):
            return None
        self.i += 1
        self.deeper()
        if self.op("}"):
            raise self.fail("Expected a filter inside the braces")
        node = self.or_expr(ctx)
        if self.tok.kind != "end":  # the guide's own examples sometimes lack the last }
            self.expect_op("}")
        self.depth -= 1
        return node

    def predicate(self, ctx: str) -> Node:
        token = self.tok
        if token.kind != "ident":
            raise self.fail("Expected a keyword")
        name = token.text.lower()
        self.i += 1
        if ctx == "trace":
            if name == "service":
                return ServiceFilter(self.selector(optional=True), self.braces("node"))
            if name == "edge":
                return self.edge()
            if name.startswith("annotation.") or (name == "annotation" and self.op("[")):
                return self.annotation(token.text)
            if name.startswith("rootcause"):
                return self.rootcause(name)
            if name in ("group.name", "group.arn"):
                return self.group(name)
            if name == "json" or name == "id":
                self.i -= 1
                raise self.fail(f"{name} only applies inside rootcause.json / service() and "
                                "edge(); not supported here")
        elif name in ("service", "edge", "annotation", "rootcause", "group.name",
                      "group.arn") or name.startswith(("annotation.", "rootcause.")):
            self.i -= 1
            raise self.fail(f"{name} cannot be used inside {_CONTEXT_NAMES[ctx]}")
        keywords = _CONTEXTS[ctx]
        if name not in keywords:
            self.i -= 1
            if name in _ONLY_IN or name in _TRACE:
                where = _ONLY_IN.get(name, "a trace filter")
                raise self.fail(f"Keyword {name!r} applies only in {where}")
            raise self.fail("Unsupported keyword")
        return self.compare(name, keywords[name])

    def compare(self, name: str, kind: str) -> Compare:
        if kind == BOOLEAN:
            if not self.op("=", "!="):
                return Compare(name, kind)
            op = self.next().text
            if not self.word("TRUE", "FALSE"):
                raise self.fail("Expected true or false")
            return Compare(name, kind, op, self.next().text.lower() == "true")
        if self.op(*_COMPARE):
            op = self.next().text
        elif self.word(*_STRING_OPS):
            op = self.next().text.upper()
        else:
            return Compare(name, kind)  # bare: the field is set (``http.url AND ...``)
        if kind == NUMBER:
            if op in _STRING_OPS:
                raise FilterError(f"{op} does not apply to the number keyword {name}")
            if self.tok.kind != "num":
                raise self.fail("Expected a number")
            return Compare(name, kind, op, self.next().value)
        if op not in ("=", "!=", *_STRING_OPS):
            raise FilterError(f"Operator {op} does not apply to the string keyword {name}")
        if self.tok.kind == "str" or (self.tok.kind == "ident" and not self.word(
                "AND", "OR", "NOT")):
            return Compare(name, kind, op, str(self.next().value))
        raise self.fail("Expected a quoted string")

    def selector(self, optional: bool) -> Selector:
        self.expect_op("(")
        if self.op(")"):
            self.i += 1
            if not optional:
                raise self.fail("Expected a service name or id()")
            return Selector()
        selector = self.one_selector()
        self.expect_op(")")
        return selector

    def one_selector(self) -> Selector:
        if self.tok.kind == "str":
            return Selector(name=self.next().value)
        if self.word("ID"):
            self.i += 1
            self.expect_op("(")
            fields: dict[str, str] = {}
            while not self.op(")"):
                if self.tok.kind != "ident":
                    raise self.fail("Expected name:, type: or account.id:")
                key = self.next().text.lower().rstrip(":")
                if self.op("="):
                    self.i += 1
                if key not in ("name", "type", "account.id"):
                    self.i -= 1
                    raise self.fail("id() takes name:, type: and account.id:")
                if self.tok.kind != "str":
                    raise self.fail(f"Expected a quoted {key}")
                fields[key] = self.next().value
                if self.op(","):
                    self.i += 1
            self.i += 1
            if not fields:
                raise self.fail("id() needs name:, type: or account.id:")
            return Selector(fields.get("name"), fields.get("type"), fields.get("account.id"))
        if self.tok.kind == "ident":
            return Selector(name=self.next().text)
        raise self.fail("Expected a quoted service name or id()")

    def edge(self) -> Node:
        self.expect_op("(")
        source = self.one_selector()
        self.expect_op(",")
        target = self.one_selector()
        self.expect_op(")")
        return EdgeFilter(source, target, self.braces("edge"))

    def rootcause(self, name: str) -> Node:
        parts = name.split(".")
        if len(parts) == 2 and parts[1] == "json":
            raise FilterError("rootcause.json (JSON root cause objects) is not supported by "
                              "xrayd")
        if len(parts) != 3 or parts[1] not in _ROOT_CAUSES or parts[2] not in (
                "service", "entity", "exception"):
            self.i -= 1
            raise self.fail("Expected rootcause.<fault|error|responsetime>."
                            "<service|entity|exception>")
        kind, level = parts[1], parts[2]
        if kind == "responsetime" and level == "exception":
            self.i -= 1
            raise self.fail("Response time root causes have no exceptions")
        ctx = {"service": "rc_service", "exception": "rc_exception"}.get(
            level, "rc_entity_time" if kind == "responsetime" else "rc_entity")
        return RootCause(kind, level, self.braces(ctx))

    def group(self, name: str) -> Node:
        if not self.op("=", "!="):
            raise self.fail(f"Expected = or != after {name}")
        op = self.next().text
        if self.tok.kind != "str":
            raise self.fail("Expected a quoted group name or ARN")
        ref = self.next().value
        if self.groups is None:
            raise FilterError(f"{name}: groups are not available here")
        if self.group_depth >= MAX_GROUP_DEPTH:
            raise FilterError(f"Group {ref!r}: groups refer to each other more than "
                              f"{MAX_GROUP_DEPTH} deep")
        expression = self.groups(ref)
        if expression is None:
            raise FilterError(f"No group {ref!r}")
        self.deeper()
        inner = parse(expression, self.groups, self.group_depth + 1) if expression.strip() \
            else Compare("duration", NUMBER, ">=", 0.0)
        self.depth -= 1
        return inner if op == "=" else Not(inner)

    def annotation(self, text: str) -> Node:
        if self.op("["):
            self.i += 1
            if self.tok.kind not in ("ident", "str"):
                raise self.fail("Expected an annotation key")
            key = str(self.next().value)
            self.expect_op("]")
        else:
            key = text.split(".", 1)[1]
        if not key or not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise FilterError(f"Invalid annotation key {key!r}")
        if not (self.op(*_COMPARE) or self.word(*_STRING_OPS)):
            return Annotation(key, None, "", None)
        op = self.next().text.upper()
        token = self.next()
        if token.kind == "str":
            typ, value = "s", token.value
        elif token.kind == "num":
            typ, value = "n", token.value
        elif token.kind == "ident" and token.text.lower() in ("true", "false"):
            typ, value = "b", int(token.text.lower() == "true")
        else:
            self.i -= 1
            raise self.fail("Expected a string, number or boolean")
        if op in _STRING_OPS and typ != "s":
            raise FilterError(f"{op} needs a string value")
        if typ == "b" and op not in ("=", "!="):
            raise FilterError(f"Operator {op} does not apply to booleans")
        return Annotation(key, op, typ, value)


def _like(op: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if op == "CONTAINS":
        return f"%{escaped}%"
    if op == "BEGINSWITH":
        return f"{escaped}%"
    return f"%{escaped}"


def parse(text: str, groups: GroupResolver | None = None, group_depth: int = 0) -> Node:
    """The tree of a filter expression; ``groups`` maps a group name or ARN to its filter
    expression (None: no such group)."""
    return _Parser(text, groups, group_depth).parse()


def compile_filter(text: str, groups: GroupResolver | None = None) -> tuple[str, list[Any]]:
    """The SQL condition (on alias ``t``) and its parameters for a filter expression, when the
    indexed columns decide it alone; else FilterError (use ``parse`` and ``Node.sql``)."""
    sql = parse(text, groups).sql()
    if not sql.is_exact:
        raise FilterError("This filter needs the trace documents; use queries.trace_summaries")
    return sql.sure, sql.sure_params
