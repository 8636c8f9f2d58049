"""X-Ray filter expressions, parsed and compiled to an SQL condition on the ``traces t`` table.

Supported (keywords case-insensitive): ``service("name")``; ``annotation.key`` /
``annotation[key]`` compared with ``= != < <= > >= CONTAINS BEGINSWITH ENDSWITH`` against a
string, number or boolean (bare ``annotation.key`` means ``= true``); ``responsetime`` and
``duration`` (seconds) and ``http.status`` against numbers; ``http.url``, ``http.method``,
``user`` and ``name`` (root segment name) against strings; the booleans ``error``, ``fault``,
``throttle``, ``ok`` and ``partial``, bare or ``= true|false``; combined with ``AND``/``&&``,
``OR``/``||``, ``NOT``/``!`` and parentheses. Pure: text in, (sql, parameters) out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from xrayd.store.schema import buckets_sql

MAX_EXPRESSION = 2000


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
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>&&|\|\||!=|<=|>=|[=<>!(){}\[\],])
""", re.VERBOSE)

_COMPARE = {"=", "!=", "<", "<=", ">", ">="}
_STRING_OPS = {"CONTAINS", "BEGINSWITH", "ENDSWITH"}
_BOOLEAN_KEYWORDS = {
    "error": "t.error = 1",
    "fault": "t.fault = 1",
    "throttle": "t.throttle = 1",
    "ok": "(t.error = 0 AND t.fault = 0 AND t.throttle = 0)",
    "partial": "EXISTS (SELECT 1 FROM segments p WHERE p.tpk = t.pk AND p.in_progress = 1)",
}
_NUMBER_KEYWORDS = {
    "responsetime": "(t.root_end - t.root_start)",
    "duration": "(t.end - t.start)",
    "http.status": "t.http_status",
}
_STRING_KEYWORDS = {
    "http.url": "t.http_url",
    "http.method": "t.http_method",
    "user": "t.user",
    "name": "t.root_name",
}


def tokenize(text: str) -> list[Token]:
    if len(text) > MAX_EXPRESSION:
        raise FilterError(f"Filter expression longer than {MAX_EXPRESSION} characters")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
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


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.params: list[Any] = []

    # helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def word(self, *words: str) -> bool:
        token = self.tok
        return token.kind == "ident" and token.text.upper() in words

    def op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def expect_op(self, op: str) -> None:
        if not self.op(op):
            raise FilterError(f"Expected {op!r} at position {self.tok.pos}")
        self.i += 1

    def fail(self, what: str) -> FilterError:
        token = self.tok
        shown = token.text or "end of expression"
        return FilterError(f"{what} at position {token.pos} (found {shown!r})")

    # grammar
    def parse(self) -> str:
        if self.tok.kind == "end":
            raise FilterError("Empty filter expression")
        sql = self.or_expr()
        if self.tok.kind != "end":
            raise self.fail("Unexpected token")
        return sql

    def or_expr(self) -> str:
        parts = [self.and_expr()]
        while self.word("OR") or self.op("||"):
            self.i += 1
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def and_expr(self) -> str:
        parts = [self.not_expr()]
        while self.word("AND") or self.op("&&"):
            self.i += 1
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def not_expr(self) -> str:
        if self.word("NOT") or self.op("!"):
            self.i += 1
            return f"(NOT {self.not_expr()})"
        if self.op("("):
            self.i += 1
            inner = self.or_expr()
            self.expect_op(")")
            return inner
        return self.predicate()

    def predicate(self) -> str:
        token = self.tok
        if token.kind != "ident":
            raise self.fail("Expected a keyword")
        name = token.text.lower()
        self.i += 1
        if name == "service":
            return self.service()
        if name.startswith("annotation.") or (name == "annotation" and self.op("[")):
            return self.annotation(token.text)
        if name in _BOOLEAN_KEYWORDS:
            return self.boolean(name)
        if name in _NUMBER_KEYWORDS:
            op = self.comparison()
            value = self.number()
            self.params.append(value)
            return f"{_NUMBER_KEYWORDS[name]} {op} ?"
        if name in _STRING_KEYWORDS:
            return self.string_compare(_STRING_KEYWORDS[name])
        self.i -= 1
        raise self.fail("Unsupported keyword")

    def service(self) -> str:
        self.expect_op("(")
        if self.op(")"):
            raise self.fail("service() needs a name")
        if self.tok.kind != "str":
            raise self.fail("Expected a quoted service name")
        self.params.append(self.next().value)
        self.expect_op(")")
        return "t.pk IN (SELECT tpk FROM services WHERE name = ?)"

    def annotation(self, text: str) -> str:
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
        sub = (f"t.pk IN (SELECT tpk FROM annotations WHERE bucket IN ({buckets_sql()}) "
               "AND key = ? AND ")
        if not (self.op(*_COMPARE) or self.word(*_STRING_OPS)):
            self.params.extend([key, 1])
            return sub + "typ = 'b' AND val = ?)"
        op = self.next().text.upper()
        value_token = self.next()
        if value_token.kind == "str":
            typ, value = "s", value_token.value
        elif value_token.kind == "num":
            typ, value = "n", value_token.value
        elif value_token.kind == "ident" and value_token.text.lower() in ("true", "false"):
            typ, value = "b", int(value_token.text.lower() == "true")
        else:
            self.i -= 1
            raise self.fail("Expected a string, number or boolean")
        if op in _STRING_OPS:
            if typ != "s":
                raise FilterError(f"{op} needs a string value")
            self.params.extend([key, _like(op, value)])
            return sub + "typ = 's' AND val LIKE ? ESCAPE '\\')"
        if op == "!=":
            self.params.extend([key, typ, value])
            return sub + "NOT (typ = ? AND val = ?))"
        if typ == "b" and op != "=":
            raise FilterError(f"Operator {op} does not apply to booleans")
        self.params.extend([key, typ, value])
        return sub + f"typ = ? AND val {op} ?)"

    def boolean(self, name: str) -> str:
        sql = _BOOLEAN_KEYWORDS[name]
        if not self.op("=", "!="):
            return sql
        op = self.next().text
        if not self.word("TRUE", "FALSE"):
            raise self.fail("Expected true or false")
        wanted = self.next().text.lower() == "true"
        if op == "!=":
            wanted = not wanted
        return sql if wanted else f"(NOT {sql})"

    def comparison(self) -> str:
        if not self.op(*_COMPARE):
            raise self.fail("Expected a comparison operator")
        return self.next().text

    def number(self) -> float:
        if self.tok.kind != "num":
            raise self.fail("Expected a number")
        return self.next().value

    def string_compare(self, column: str) -> str:
        if self.op("=", "!="):
            op = self.next().text
        elif self.word(*_STRING_OPS):
            op = self.next().text.upper()
        else:
            raise self.fail("Expected =, !=, CONTAINS, BEGINSWITH or ENDSWITH")
        if self.tok.kind == "num" and column == "t.http_status":
            value: Any = self.next().value
        elif self.tok.kind == "str":
            value = self.next().value
        else:
            raise self.fail("Expected a quoted string")
        if op in _STRING_OPS:
            self.params.append(_like(op, value))
            return f"coalesce({column}, '') LIKE ? ESCAPE '\\'"
        self.params.append(value)
        return f"{column} {op} ?" if op == "=" else f"coalesce({column} != ?, 1)"


def _like(op: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if op == "CONTAINS":
        return f"%{escaped}%"
    if op == "BEGINSWITH":
        return f"{escaped}%"
    return f"%{escaped}"


def compile_filter(text: str) -> tuple[str, list[Any]]:
    """The SQL condition (on alias ``t``) and its parameters for a filter expression."""
    parser = _Parser(text)
    sql = parser.parse()
    return sql, parser.params
