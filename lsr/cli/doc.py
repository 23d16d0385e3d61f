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

from lsr.cli.hits import one_line
from lsr.cli.main import path_argument

HELP = "print a stored document of a collection by id"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", type=path_argument, metavar="COLLECTION", help="folder written by `lsr index`")
    p.add_argument("ids", nargs="+", metavar="ID",
                   help="document id(s); one prints its text as stored, several an `ID<TAB>TEXT` line each, the "
                        "text's backslashes, tabs and line breaks written as \\\\, \\t, \\n and \\r, other control "
                        "characters as \\xHH or \\uHHHH")
    p.add_argument("--json", action="store_true", help="print {id: text} as JSON")


def run(args: argparse.Namespace) -> int:
    from lsr.encode.texts import check_utf8
    from lsr.sparse import short_repr

    ids = list(dict.fromkeys(args.ids))  # an id given twice is printed once
    for doc_id in ids:  # a Latin-1 byte was "no document 'caf\udce9'", as if the id were merely unknown
        check_utf8(doc_id, f"the id {short_repr(doc_id)}")
    texts = _texts(Path(args.collection), ids)
    found = {doc_id: text for doc_id, text in zip(ids, texts) if text is not None}  # printed even if some are not
    if args.json:
        print(json.dumps(found, ensure_ascii=False))
    else:
        for doc_id, text in found.items():
            print(f"{doc_id}\t{one_line(text)}" if len(ids) > 1 else text)
    missing = [doc_id for doc_id in ids if doc_id not in found]
    if missing:
        raise ValueError(f"no document {', '.join(map(short_repr, missing))} in {args.collection}")
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
