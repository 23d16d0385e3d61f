"""Print stored documents of a collection by id (no models are loaded).

In a sharded collection each id is read from the shard that owns it.

Examples:
  lsr doc runs/scifact 4983
  lsr doc runs/scifact 4983 5836 --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lsr.cli.main import path_argument

HELP = "print a stored document of a collection by id"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", type=path_argument, metavar="COLLECTION", help="folder written by `lsr index`")
    p.add_argument("ids", nargs="+", metavar="ID", help="document id(s)")
    p.add_argument("--json", action="store_true", help="print {id: text} as JSON")


def run(args: argparse.Namespace) -> int:
    texts = _texts(Path(args.collection), args.ids)
    found = {doc_id: text for doc_id, text in zip(args.ids, texts) if text is not None}  # printed even if some are not
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
    else:
        for doc_id, text in found.items():
            print(f"{doc_id}\t{text}" if len(args.ids) > 1 else text)
    missing = [doc_id for doc_id in args.ids if doc_id not in found]
    if missing:
        raise ValueError(f"no document {', '.join(map(repr, missing))} in {args.collection}")
    return 0


def _texts(path: Path, ids: list[str]) -> list[str | None]:
    """The stored texts of ``ids`` (None where unknown), each from the shard that owns it in a sharded collection."""
    from lsr.ingest.collection import Collection
    from lsr.ingest.sharding import is_sharded, read_shard_map

    if not is_sharded(path):
        return Collection.open(path).text(ids)
    shard_map = read_shard_map(path)
    texts: list[str | None] = [None] * len(ids)
    for shard, positions in shard_map.positions_by_owner(ids).items():
        for position, text in zip(positions, Collection.open(shard_map.paths(path)[shard]).text([ids[p] for p in positions])):
            texts[position] = text
    return texts
