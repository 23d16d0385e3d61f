"""Search a collection built by `lsr index`, in-process (no server).

Examples:
  lsr search runs/scifact "does vitamin d prevent fractures?"
  lsr search runs/scifact "statins and muscle pain" --mode hybrid --prf --k 5 --explain
"""

from __future__ import annotations

import argparse
import json
import sys

from lsr.cli.device import add_device_arguments, device_options

HELP = "search a collection in-process and print the hits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lsr.search.fusion import NORMALIZATIONS
    from lsr.search.searcher import MODES, PRF_INTERPOLATIONS, QUERY_ENCODERS

    p.add_argument("collection", help="folder written by `lsr index`")
    p.add_argument("query", nargs="+", help="query text")
    p.add_argument("--k", type=int, default=10, help="hits to return, 1..1000 (default 10)")
    p.add_argument("--mode", choices=MODES, default="sparse", help="retrieval mode (default sparse)")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="min_max", help="hybrid score normalisation")
    p.add_argument("--sparse-weight", type=float, default=0.5, help="hybrid weight of the sparse list, in [0, 1]")
    p.add_argument("--candidates", type=int, default=100, help="hybrid candidates per list (default 100)")
    p.add_argument("--prf", action="store_true", help="apply pseudo-relevance feedback")
    p.add_argument("--prf-docs", type=int, default=3, help="feedback documents (default 3)")
    p.add_argument("--prf-weight", type=float, default=0.5, help="PRF β (default 0.5)")
    p.add_argument("--prf-terms", type=int, default=100, help="new sparse terms at most (default 100)")
    p.add_argument("--prf-interpolate", choices=PRF_INTERPOLATIONS, default="after", help="where to interpolate (default after)")
    p.add_argument("--query-encoder", choices=QUERY_ENCODERS, default="splade", help="query side model (default splade)")
    p.add_argument("--text", action="store_true", help="print each hit's text")
    p.add_argument("--explain", action="store_true", help="print each hit's top contributing terms")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    from lsr.search.searcher import HybridOptions, PrfOptions, Searcher

    searcher = Searcher.open(args.collection, query_encoder=args.query_encoder, **device_options(args))
    hybrid = HybridOptions(args.normalization, args.sparse_weight, args.candidates)
    prf = PrfOptions(args.prf_docs, args.prf_weight, args.prf_terms, args.prf_interpolate) if args.prf else None
    result = searcher.search(
        " ".join(args.query), k=args.k, mode=args.mode, hybrid=hybrid, prf=prf,
        include_text=args.text, explain=args.explain,
    )
    if args.json:
        json.dump(
            {"hits": [vars(h) for h in result.hits], "timings": result.timings, "truncated": result.truncated},
            sys.stdout, ensure_ascii=False, indent=1,
        )
        print()
        return 0
    for rank_no, hit in enumerate(result.hits, start=1):
        print(f"{rank_no:3d}  {hit.score:9.4f}  {hit.doc_id}")
        if hit.explanation:
            print("      " + ", ".join(f"{t} {w:.2f}" for t, w in hit.explanation))
        if hit.text:
            print("      " + hit.text[:300].replace("\n", " "))
    stages = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in result.timings.items())
    print(f"{len(result.hits)} hits ({stages})" + ("; query truncated" if result.truncated else ""))
    return 0
