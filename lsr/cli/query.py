"""Query a running `lsr serve` endpoint and print the hits.

Examples:
  lsr query --endpoint 127.0.0.1:50051 "what causes diabetes?"
  lsr query --endpoint 127.0.0.1:50051 "statins and muscle pain" --mode hybrid --prf --k 5 --text
  lsr query --endpoint search.internal:443 --tls --auth-token-file token.txt "aspirin" --json
"""

from __future__ import annotations

import argparse
import json
import sys

from lsr.cli.endpoint import add_endpoint_arguments, connect
from lsr.cli.fusion import add_fusion_arguments, add_prf_arguments, chosen_mode, hybrid_options, prf_options

HELP = "search a running `lsr serve` endpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="+", help="the query (several words are joined with spaces)")
    add_endpoint_arguments(p, required=True)
    p.add_argument("-k", "--k", type=int, default=10, help="hits to return, 1..1000 (default 10)")
    add_fusion_arguments(p)
    add_prf_arguments(p)
    p.add_argument("--text", dest="include_text", action="store_true", help="print each hit's text")
    p.add_argument("--explain", action="store_true", help="print the terms that contributed most to each hit")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")


def run(args: argparse.Namespace) -> int:
    import grpc

    from lsr.encode.texts import check_utf8
    from lsr.service.client import call_failed

    hybrid = hybrid_options(args)
    text = " ".join(args.text)
    if not text.strip():
        raise ValueError("the query is empty; give the words to search for")
    check_utf8(text, "the query")  # gRPC's encoder said only "surrogates not allowed"
    with connect(args) as client:
        try:
            mode = chosen_mode(args, lambda: client.stats()["details"].get("modes", "sparse").split(","))
            result = client.search(
                text, k=args.k, mode=mode, hybrid=hybrid, prf=prf_options(args),
                include_text=args.include_text, explain=args.explain,
            )
        except grpc.RpcError as exc:
            raise call_failed(exc) from None
    if args.json:
        hits = [
            {"doc_id": h.doc_id, "score": h.score, "sparse_score": h.sparse_score, "dense_score": h.dense_score, "bm25_score": h.bm25_score,
             **({"text": h.text} if args.include_text else {}),
             **({"explanation": [list(e) for e in h.explanation]} if args.explain else {})}
            for h in result.hits
        ]
        json.dump({"hits": hits, "truncated": result.truncated, "index_version": client.last_index_version,
                   "partial": result.partial, "shards_missing": list(result.shards_missing),
                   "timings_ms": {s: round(1000 * t, 3) for s, t in result.timings.items()}}, sys.stdout, ensure_ascii=False)
        print()
        return 0
    if result.truncated:
        print("note: the query was longer than the encoder's limit and was truncated", file=sys.stderr)
    if result.partial:
        print(f"note: partial results: shard(s) {', '.join(result.shards_missing)} did not answer, so their documents "
              "are missing", file=sys.stderr)
    for rank, hit in enumerate(result.hits, 1):
        print(f"{rank:3d}  {hit.score:9.4f}  {hit.doc_id}")
        if args.include_text and hit.text:
            print(f"     {hit.text[:300]}")
        if args.explain and hit.explanation:
            print("     " + ", ".join(f"{term} {weight:.3f}" for term, weight in hit.explanation))
    return 0
