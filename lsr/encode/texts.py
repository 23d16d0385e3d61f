"""Checking the texts an encoder is given, apart from the encoders: a BM25 search checks its query the same way
without importing torch."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Set as AbstractSet
from typing import Any, Sequence


def check_texts(texts: Any) -> list[str]:
    """Accept a string or a sequence of strings; a non-string raises TypeError naming its position, and a string
    holding lone surrogates (bytes Python could not decode, e.g. from argv or stdin: the tokenizer would fail with
    an opaque TypeError) raises ValueError naming it."""
    if isinstance(texts, str):
        texts = [texts]
    elif isinstance(texts, (bytes, bytearray)):  # iterated, they were their byte values: "texts[0] is int"
        raise TypeError(f"texts must be str, got {type(texts).__name__}: decode it first (e.g. .decode('utf-8'))")
    elif getattr(texts, "ndim", None) == 0:  # a 0-d numpy array: "iteration over a 0-d array"
        return check_texts(texts.item())
    elif isinstance(texts, (AbstractSet, Mapping)):  # vectors come back in input order, which these do not have
        raise TypeError(f"texts must be ordered (a list or tuple of strings), got a {type(texts).__name__}")
    elif not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
        at = surrogate_at(text)
        if at is not None:
            raise ValueError(f"texts[{i}] is not UTF-8 text: an undecodable byte at character {at}")
    return texts


def check_utf8(text: str, what: str) -> None:
    """A text typed or piped to the CLI (``what``: "QUERY", "standard input line 3") is UTF-8: bytes Python could not
    decode are one line naming where they came from, not check_texts' "texts[0]", a list the user never saw."""
    at = surrogate_at(text)
    if at is not None:
        raise ValueError(f"{what} is not UTF-8 text: an undecodable byte at character {at}; give it as UTF-8")


def surrogate_at(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (an undecodable byte kept by Python, or JSON's escaped "\\ud800"),
    which no UTF-8 tokenizer takes; None for UTF-8 text."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def lowercased(text: str) -> str:
    """``text`` lowercased as a folder's ``do_lower_case`` has sentence-transformers do it: each character alone (a
    tokenizer normaliser). Python's ``str.lower`` makes a word-final capital sigma a final one (ς, not σ), another
    token and another vector; it is its only rule that looks at a character's neighbours."""
    return text.replace("\u03a3", "\u03c3").lower()


# What tokenizers drop: control, format and private-use characters (NUL, soft hyphen, zero-width and direction marks,
# BOM), combining marks with no letter to sit on, separators; and U+FFFD, which BERT's normaliser removes.
_NO_WORD_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Mn", "Me", "Zs", "Zl", "Zp"})


def is_blank(text: str) -> bool:
    """Whether a text has no words: nothing but whitespace, control and format characters, lone combining marks
    and U+FFFD (a tokenizer drops them all, and an encoder given nothing encodes its special tokens: 'is', 'means',
    'and' ...). Stops at the first word character, so a real text costs a few characters' look."""
    for char in text:
        if char != "\ufffd" and not char.isspace() and unicodedata.category(char) not in _NO_WORD_CATEGORIES:
            return False
    return True


# A question or a passage; a longer "query" is a mistake (a document pasted whole), and BM25 reads every word of it
# (2.2 s for 3.9 MB, on a server thread).
MAX_QUERY_CHARS = 100_000


def check_query_length(text: str, what: str = "the query text") -> None:
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"{what} is {len(text):,} characters; a query may hold at most {MAX_QUERY_CHARS:,}")


def json_line(line: str):
    """``json.loads`` of one line, an integer past Python's digit limit (4,300) read as a float, as pyarrow reads
    it: ``int`` refused it with a bare ValueError that named no line, and ended even an `--on-error skip` build over
    a field nobody reads, whenever its block was read line by line."""
    return json.loads(line, parse_int=_whole)


def _whole(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def invalid_json(exc: json.JSONDecodeError) -> str:
    """A JSON line that would not parse, as an error says it: the parser's reason and where on the line (a bare
    "Unterminated string starting at" named no place)."""
    return f"invalid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno})"
