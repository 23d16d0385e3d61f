"""Index a corpus into a collection folder: SPLADE vectors + inverted index (+ MiniLM embeddings + faiss).

SOURCE may be a BEIR folder or its .zip/.tar.gz, a .jsonl/.jsonl.gz, a .parquet or a .csv file.
Encoded vectors are checkpointed in shards; an interrupted run (Ctrl-C or kill -9) continues
with --resume and produces the same bytes as an uninterrupted one.

Examples:
  lsr index scifact.tar.gz runs/scifact
  lsr index docs.csv runs/docs --id-field doc_id --fields body --dense none
  lsr index big.jsonl.gz runs/big --resume
"""

from __future__ import annotations

import argparse
import sys

from lsr.cli.device import add_device_arguments, device_options

HELP = "index a corpus (BEIR folder/archive, JSONL, Parquet, CSV) into a searchable collection"


def _fields(value: str) -> tuple[str, ...]:
    fields = tuple(f.strip() for f in value.split(",") if f.strip())
    if not fields:
        raise argparse.ArgumentTypeError("--fields needs at least one field name, e.g. title,text")
    return fields


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="BEIR folder/.zip/.tar.gz, .jsonl(.gz), .parquet or .csv")
    p.add_argument("out", metavar="OUT", help="collection folder to create")
    p.add_argument("--model", default="splade-tiny", help="SPLADE model name, hub id or folder (default: splade-tiny)")
    p.add_argument("--dense", default="minilm", help="dense model for hybrid search, or 'none' (default: minilm)")
    p.add_argument("--fields", type=_fields, default=("title", "text"),
                   help="text fields joined with a space, in order (default: title,text)")
    p.add_argument("--id-field", default="_id", help="document id field/column (default: _id)")
    p.add_argument("--batch-size", type=int, default=32, help="documents per forward pass (default: 32)")
    p.add_argument("--max-length", type=int, default=256, help="document tokens kept (default: 256)")
    p.add_argument("--limit", type=int, default=None, help="index only the first N good documents")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=int, default=10_000, metavar="N",
                   help="documents per checkpointed shard (default: 10000)")
    p.add_argument("--hnsw", type=int, nargs="?", const=32, default=None, metavar="M",
                   help="build the dense index as HNSW with M links per node (default M=32) instead of flat")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="bad rows (missing/duplicate id, non-string text, invalid JSON): stop, or skip and count")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted run into OUT")
    again.add_argument("--overwrite", action="store_true", help="replace the collection already in OUT")
    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lsr.ingest.indexing import IndexOptions, build_collection

    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    options = IndexOptions(
        model=args.model,
        dense_model=None if args.dense.lower() == "none" else args.dense,
        fields=args.fields,
        id_field=args.id_field,
        batch_size=args.batch_size,
        max_length=args.max_length,
        limit=args.limit,
        on_error=args.on_error,
        checkpoint_every=args.checkpoint_every,
        hnsw_m=args.hnsw,
        threads=args.threads,
        **device_options(args),
    )
    try:
        summary = build_collection(args.source, args.out, options, resume=args.resume, overwrite=args.overwrite,
                                   progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\nstopped; the encoded shards are kept. Continue with: lsr index {args.source} {args.out} --resume",
              file=sys.stderr)
        raise
    if summary.already_complete:
        print(f"{args.out} is already complete; nothing to resume.")
    print(summary.format())
    return 0
