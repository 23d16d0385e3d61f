"""Print stored documents of a collection by id (no models are loaded).

Examples:
  lsr doc runs/scifact 4983
  lsr doc runs/scifact 4983 5836 --json
"""

from __future__ import annotations

import argparse
import json

HELP = "print a stored document of a collection by id"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", metavar="COLLECTION", help="folder written by `lsr index`")
    p.add_argument("ids", nargs="+", metavar="ID", help="document id(s)")
    p.add_argument("--json", action="store_true", help="print {id: text} as JSON")


def run(args: argparse.Namespace) -> int:
    from lsr.ingest.collection import Collection

    texts = Collection.open(args.collection).text(args.ids)
    missing = [doc_id for doc_id, text in zip(args.ids, texts) if text is None]
    if missing:
        raise ValueError(f"no document {', '.join(map(repr, missing))} in {args.collection}")
    if args.json:
        print(json.dumps(dict(zip(args.ids, texts)), ensure_ascii=False))
        return 0
    for doc_id, text in zip(args.ids, texts):
        print(f"{doc_id}\t{text}" if len(args.ids) > 1 else text)
    return 0
