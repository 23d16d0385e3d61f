"""Rebuild a collection's inverted index, faiss index and BM25 leg from its source of truth.

The build's vector, embedding and text shards plus the journal of later upserts and deletes hold every
document, so the derived indexes can always be rebuilt: after a damaged or deleted index file,
or when `lsr verify` reports that the stores disagree. Stop any server on the collection first.
Ends with a full `lsr verify`.

A sharded collection is repaired shard by shard.

A journal damaged in the middle stops every open ("acknowledged writes lie past it"): `--salvage` keeps the
records around the damage, loses the writes inside it, and then repairs.

Examples:
  lsr repair runs/scifact
  lsr repair runs/big-4shards
  lsr repair runs/scifact --salvage
"""

from __future__ import annotations

import argparse

from lsr.cli import verify
from lsr.cli.verify import collections_of

HELP = "rebuild the inverted, faiss and BM25 indexes of a collection from its vectors, embeddings, texts and journal"


def add_arguments(p: argparse.ArgumentParser) -> None:
    verify.add_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--salvage", action="store_true",
                   help="when the journal is damaged in the middle (a flipped byte), keep every whole record around "
                        "the damage and drop the rest: the writes in the damaged bytes are lost (upserts gone, "
                        "deletes undone), everything else is kept; the damaged file stays as journal.log.damaged")


def run(args: argparse.Namespace) -> int:
    from lsr.ingest.layout import read_meta
    from lsr.ingest.repair import repair_collection
    from lsr.ingest.sharding import missing_shard

    lost = [path for name, path in collections_of(args.collection) if name and not path.is_dir()]
    if lost:  # every shard's BM25 statistics are rebuilt from all the shards' documents
        raise ValueError(f"nothing was repaired: {missing_shard(lost[0])}")
    for _, path in collections_of(args.collection):  # every shard readable and in its place before any is rewritten:
        read_meta(path)  # swapped folders each got another's BM25 leg, and a damaged lsr.json stopped it halfway
    bm25_legs: dict = {}  # a sharded collection's BM25 legs, built once for all its shards
    for name, path in collections_of(args.collection):
        for line in repair_collection(path, salvage=args.salvage, progress=not args.quiet, bm25_legs=bm25_legs):
            print(f"{name}: {line}" if name else line)
    return verify.run(args)
