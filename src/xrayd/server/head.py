"""Checks of a raw HTTP/1.1 request head, before h11 parses it: the framing ambiguities a
lenient parser accepts and a strict front end or a smuggling attempt relies on (RFC 9112).

h11 unfolds obsolete line folding, takes Transfer-Encoding over Content-Length and accepts
identical repeated Content-Length values; this server refuses all three and closes the
connection. Pure: bytes in, a verdict out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEADERS = 100

# The blank line ending a head (a bare LF is tolerated, as RFC 9112 §2.2 allows).
HEAD_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class HeadError:
    status: int  # 400, or 431 for too many header fields
    message: str


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The index just after the blank line ending the head in ``buffer``, or -1."""
    match = HEAD_END.search(buffer, start)
    return match.end() if match else -1


def check_head(head: bytes, max_headers: int = MAX_HEADERS) -> HeadError | None:
    """None when the head (request line, header lines, blank line) is unambiguous."""
    lines = head.split(b"\n")[1:]  # the request line is h11's to judge
    fields: list[tuple[bytes, bytes]] = []
    for raw in lines:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            return HeadError(400, "obsolete line folding (obs-fold) in the request head")
        name, colon, value = line.partition(b":")
        if not colon:
            return HeadError(400, "a header line without a colon")
        fields.append((name.strip().lower(), value.strip()))
        if len(fields) > max_headers:
            return HeadError(431, f"more than {max_headers} header fields")
    lengths = [v for n, v in fields if n == b"content-length"]
    codings = [v for n, v in fields if n == b"transfer-encoding"]
    if lengths and codings:
        return HeadError(400, "both Content-Length and Transfer-Encoding (RFC 9112 §6.3)")
    if len(lengths) > 1 or any(b"," in v for v in lengths):
        return HeadError(400, "more than one Content-Length")
    if sum(1 for n, _ in fields if n == b"host") > 1:
        return HeadError(400, "more than one Host header")
    return None
