"""Reading integers from text that came from outside (span attributes, segment fields, HTTP
headers). ``str.isdigit`` alone is not enough: it accepts superscripts and other Unicode digits
("²") that ``int`` refuses, and a string of thousands of digits makes ``int`` raise (Python's
integer string conversion limit) or cost time."""

from __future__ import annotations

MAX_DIGITS = 19  # up to 9,999,999,999,999,999,999: anything longer is not a field we use


def parse_uint(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """The non-negative integer ``text`` spells in ASCII digits (surrounding whitespace
    allowed), or None: never raises."""
    text = text.strip()
    if not text or len(text) > max_digits or not text.isascii() or not text.isdigit():
        return None
    return int(text)
