"""Rebuild a collection's inverted index and faiss index from its source of truth.

The build's vector and embedding shards plus the journal of later upserts and deletes hold every
document, so the derived indexes can always be rebuilt: after a damaged or deleted index file,
or when `lsr verify` reports that the stores disagree. Stop any server on the collection first.
Ends with a full verify.

Examples:
  lsr repair runs/scifact
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rebuild the inverted and faiss indexes of a collection from its vectors, embeddings and journal"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", type=Path, metavar="COLLECTION", help="a collection made by `lsr index`")


def run(args: argparse.Namespace) -> int:
    from lsr.ingest.repair import repair_collection
    from lsr.ingest.verify import verify_collection

    for line in repair_collection(args.collection):
        print(line)
    report = verify_collection(args.collection)
    for line in report.problems:
        print(f"BAD      {line}")
    if report.problems:
        return 1
    print(f"{args.collection} is intact")
    return 0
