"""Check every file of a collection against its checksum, and that its stores agree.

Reads everything (build shards, inverted index, faiss index, journal) and changes nothing.
Each damaged file is named on its own line. Exit status 0: all good; 1: problems found.
Damage to the inverted or faiss index is fixed by `lsr repair`; damage to a build shard,
lsr.json or the journal needs a backup or a re-index.

Examples:
  lsr verify runs/scifact
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "check every file of a collection (checksums) and that its stores agree"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", type=Path, metavar="COLLECTION", help="a collection made by `lsr index`")


def run(args: argparse.Namespace) -> int:
    """Print the report; `lsr repair` ends with it too."""
    from lsr.ingest.verify import verify_collection

    report = verify_collection(args.collection)
    for line in report.checked:
        print(f"checked  {line}")
    for line in report.notes:
        print(f"note     {line}")
    for line in report.problems:
        print(f"BAD      {line}")
    if report.problems:
        print(f"{len(report.problems)} problem(s) in {args.collection}; `lsr repair {args.collection}` rebuilds "
              "the inverted and faiss indexes")
        return 1
    print(f"{args.collection} is intact")
    return 0
