"""Checking the texts an encoder is given, apart from the encoders: a BM25 search checks its query the same way
without importing torch."""

from __future__ import annotations

from collections.abc import Mapping, Set as AbstractSet
from typing import Any, Sequence


def check_texts(texts: Any) -> list[str]:
    """Accept a string or a sequence of strings; a non-string raises TypeError naming its position, and a string
    holding lone surrogates (bytes Python could not decode, e.g. from argv or stdin: the tokenizer would fail with
    an opaque TypeError) raises ValueError naming it."""
    if isinstance(texts, str):
        texts = [texts]
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


_NO_WORDS = dict.fromkeys(map(ord, "\x00\u200b\u200c\u200d\u2060\ufeff"))  # NUL, zero-width chars, BOM


def is_blank(text: str) -> bool:
    """Whether a text has no words: empty, or whitespace, NUL and zero-width characters only (a tokenizer drops
    them all, and an encoder given nothing encodes its special tokens: 'is', 'means', 'and' ...)."""
    return not text.translate(_NO_WORDS).strip()


# A question or a passage; a longer "query" is a mistake (a document pasted whole), and BM25 reads every word of it
# (2.2 s for 3.9 MB, on a server thread).
MAX_QUERY_CHARS = 100_000


def check_query_length(text: str, what: str = "the query text") -> None:
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"{what} is {len(text):,} characters; a query may hold at most {MAX_QUERY_CHARS:,}")
