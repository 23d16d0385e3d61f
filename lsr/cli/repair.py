"""Rebuild a collection's inverted index and faiss index from its source of truth.

The build's vector and embedding shards plus the journal of later upserts and deletes hold every
document, so the derived indexes can always be rebuilt: after a damaged or deleted index file,
or when `lsr verify` reports that the stores disagree. Stop any server on the collection first.
Ends with a full `lsr verify`.

A sharded collection is repaired shard by shard.

Examples:
  lsr repair runs/scifact
  lsr repair runs/big-4shards
"""

from __future__ import annotations

import argparse

from lsr.cli import verify
from lsr.cli.verify import add_arguments, collections_of  # noqa: F401 - the same single COLLECTION argument

HELP = "rebuild the inverted and faiss indexes of a collection from its vectors, embeddings and journal"


def run(args: argparse.Namespace) -> int:
    from lsr.ingest.repair import repair_collection

    for name, path in collections_of(args.collection):
        for line in repair_collection(path):
            print(f"{name}: {line}" if name else line)
    return verify.run(args)
