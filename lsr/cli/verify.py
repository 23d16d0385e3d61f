"""Check every file of a collection against its checksum, and that its stores agree.

Reads everything (build shards, inverted index, faiss index, BM25 leg, journal) and changes nothing.
Each damaged file is named on its own line. Exit status 0: all good; 1: problems found.
Damage to the inverted, faiss or BM25 index is fixed by `lsr repair`; damage to a build shard,
lsr.json or the journal needs a backup or a re-index.

A sharded collection (`lsr index --shards N`) is checked shard by shard, each line naming its shard.

Examples:
  lsr verify runs/scifact
  lsr verify runs/big-4shards
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lsr.cli.main import folder_argument

HELP = "check every file of a collection (checksums) and that its stores agree"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", type=folder_argument, metavar="COLLECTION",
                   help="a collection made by `lsr index` (a sharded one: every shard)")


def run(args: argparse.Namespace) -> int:
    """Print the report of each collection (each shard of a sharded one); `lsr repair` ends with it too."""
    from lsr.files import CorruptFileError
    from lsr.ingest.sharding import missing_shard
    from lsr.ingest.verify import Report, verify_collection

    problems = 0
    try:
        collections = collections_of(args.collection)
    except CorruptFileError as exc:  # a damaged shard map is a finding (exit 1), not bad input (exit 2)
        print(f"BAD      {exc}")
        return 1
    for name, path in collections:
        report = verify_collection(path) if not name or path.is_dir() else Report(problems=[missing_shard(path)])
        prefix = f"{name}: " if name else ""
        for line in report.checked:
            print(f"checked  {prefix}{line}")
        for line in report.notes:
            print(f"note     {prefix}{line}")
        for line in report.problems:
            print(f"BAD      {prefix}{line}")
        problems += len(report.problems)
    if problems:
        print(f"{problems} problem(s) in {args.collection}; `lsr repair {args.collection}` rebuilds the inverted, "
              "faiss and BM25 indexes (add --salvage for a damaged journal); any other damaged file needs a backup "
              "or a re-index")
        return 1
    print(f"{args.collection} is intact")
    return 0


def collections_of(path: Path) -> list[tuple[str, Path]]:
    """(shard name, folder) of each collection under ``path``: its shards, or itself (an empty name)."""
    from lsr.ingest.sharding import is_sharded, read_shard_map

    if not is_sharded(path):
        return [("", path)]
    shard_map = read_shard_map(path)
    return list(zip(shard_map.names, shard_map.paths(path)))
