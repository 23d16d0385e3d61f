"""How `lsr search` (in-process) and `lsr query` (through a server) print a SearchResult: the same table and the same
JSON, so a script written against one reads the other (they had other keys, timings in seconds against ms)."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

_NAMED = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Control characters (an ESC sequence clears a terminal or retitles it; \x0b, \x85 and U+2028 end a line to Python's
# splitlines), and the direction overrides that reorder what a terminal shows.
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """A stored text on one line of a terminal or a line reader: backslash, tab and line breaks as ``\\\\``, ``\\t``,
    ``\\n``, ``\\r`` (PostgreSQL's text COPY format), every other control or direction character as ``\\xHH`` or
    ``\\uHHHH``. A document's text printed raw could forge another line or hit ("d2<TAB>...", ``\\r`` then a fake
    rank) or drive the terminal."""
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group()) or (f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                                             else f"\\u{ord(m.group()):04x}"), text)


def result_record(result: Any, *, text: bool, explain: bool, index_version: str | None = None) -> dict:
    """The JSON of one result. Each hit's ``text`` and ``explanation`` appear when asked for (--text, --explain);
    ``index_version`` when a server reported it; timings are milliseconds per stage."""
    hits = []
    for hit in result.hits:
        record = {"doc_id": hit.doc_id, "score": hit.score, "sparse_score": hit.sparse_score,
                  "dense_score": hit.dense_score, "bm25_score": hit.bm25_score}
        if text:
            record["text"] = hit.text or ""
        if explain:
            record["explanation"] = [list(pair) for pair in hit.explanation]
        hits.append(record)
    return {"hits": hits, "truncated": result.truncated, "partial": result.partial,
            "shards_missing": list(result.shards_missing),
            "timings_ms": {stage: round(1000 * seconds, 3) for stage, seconds in result.timings.items()},
            **({"index_version": index_version} if index_version is not None else {})}


def print_json(record: dict, *, query: str | None = None) -> None:
    """Indented for a query given as an argument; one line carrying its ``query`` for each query read from a stream."""
    if query is None:
        print(json.dumps(record, ensure_ascii=False, indent=1), flush=True)
    else:
        print(json.dumps({"query": query, **record}, ensure_ascii=False), flush=True)


def print_table(result: Any, mode: str) -> None:
    """Rank, score and id a line, each hit's explanation and text under it, then a footer with the stage timings;
    a cut query and missing shards are notes on standard error, apart from the hits a pipe reads."""
    for rank, hit in enumerate(result.hits, start=1):
        print(f"{rank:3d}  {hit.score:9.4f}  {hit.doc_id}")
        if hit.explanation:
            print("      " + ", ".join(f"{term} {weight:.2f}" for term, weight in hit.explanation))
        if hit.text:
            print("      " + one_line(hit.text[:300]))
    stages = ", ".join(f"{stage} {seconds * 1000:.1f} ms" for stage, seconds in result.timings.items())
    print(f"{len(result.hits)} hits, {mode} ({stages})", flush=True)
    if result.truncated:
        print("note: the query was longer than the encoder's limit and was truncated", file=sys.stderr)
    if result.partial:
        print(f"note: partial results: shard(s) {', '.join(result.shards_missing)} did not answer, so their documents "
              "are missing", file=sys.stderr)
