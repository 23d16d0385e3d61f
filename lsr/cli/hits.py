"""How `lsr search` (in-process) and `lsr query` (through a server) print a SearchResult: the same table and the same
JSON, so a script written against one reads the other (they had other keys, timings in seconds against ms)."""

from __future__ import annotations

import json
import sys
from typing import Any


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
            print("      " + hit.text[:300].replace("\n", " "))
    stages = ", ".join(f"{stage} {seconds * 1000:.1f} ms" for stage, seconds in result.timings.items())
    print(f"{len(result.hits)} hits, {mode} ({stages})", flush=True)
    if result.truncated:
        print("note: the query was longer than the encoder's limit and was truncated", file=sys.stderr)
    if result.partial:
        print(f"note: partial results: shard(s) {', '.join(result.shards_missing)} did not answer, so their documents "
              "are missing", file=sys.stderr)
