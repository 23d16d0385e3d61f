"""Index a corpus into a collection folder: SPLADE vectors + inverted index (+ MiniLM embeddings + faiss).

SOURCE may be a BEIR folder or its .zip/.tar.gz, a .jsonl/.jsonl.gz, a .parquet, a .csv or a .txt file
(one document per line, ids are line numbers).
Encoded vectors are checkpointed in shards; an interrupted run (Ctrl-C, SIGTERM or kill -9) continues
with --resume and produces the same bytes as an uninterrupted one.

Examples:
  lsr index scifact.tar.gz runs/scifact
  lsr index docs.csv runs/docs --id-field doc_id --fields body --dense none
  lsr index big.jsonl.gz runs/big --resume
  lsr index big.jsonl.gz runs/big --shards 4               # 4 shard collections, served by `lsr serve runs/big`
  lsr index big.jsonl.gz runs/big --engine ray --workers 2   # encode on a local Ray instance, same bytes
  lsr index big.jsonl.gz /shared/big --engine ray --ray-address auto --shards 8   # on a running Ray cluster
  lsr encode --input docs.jsonl --output vectors.parquet && lsr index vectors.parquet runs/docs --pre-encoded
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lsr.files import FolderBusyError
from lsr.cli.device import add_device_arguments, device_options
from lsr.cli.main import fields_argument, flags_given, name_argument, path_argument, refuse_unused, shell_word

HELP = "index a corpus (BEIR folder/archive, JSONL, Parquet, CSV, text) into a searchable collection"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=path_argument, metavar="SOURCE", help="BEIR folder/.zip/.tar.gz, .jsonl(.gz), .parquet, .csv(.gz) or .txt")
    p.add_argument("out", type=path_argument, metavar="COLLECTION", help="collection folder to create")
    p.add_argument("--model", type=name_argument, default=None,
                   help="SPLADE model name, hub id or folder (default: splade-tiny, or what a --pre-encoded file names)")
    p.add_argument("--dense", type=name_argument, default="minilm", help="dense model for hybrid search, or 'none' (default: minilm)")
    p.add_argument("--bm25", choices=("english", "none"), default="english",
                   help="build a BM25 leg (bm25s, English stopwords and stemmer) for --mode bm25 and fusion, or 'none' "
                        "(default: english)")
    p.add_argument("--fields", type=fields_argument, default=("title", "text"),
                   help="text fields joined with a space, in order (default: title,text, those the corpus has; "
                        "pyserini's contents when it has neither)")
    p.add_argument("--id-field", type=name_argument, default="_id",
                   help="document id field/column (default: _id, else id, docid or doc_id, whichever the corpus has)")
    p.add_argument("--batch-size", type=int, default=32, help="documents per forward pass (default: 32)")
    p.add_argument("--max-length", type=int, default=None,
                   help="SPLADE document tokens kept (default: 256, or the model folder's max_seq_length where smaller); "
                        "the dense model keeps its own max_seq_length")
    p.add_argument("--limit", type=int, default=None, help="index only the first N good documents")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, and processes tokenising for the BM25 leg (default: every CPU this "
                        "process may use)")
    p.add_argument("--checkpoint-every", type=int, default=10_000, metavar="N",
                   help="documents per checkpointed shard (default: 10000)")
    p.add_argument("--hnsw", type=int, nargs="?", const=32, default=None, metavar="M",
                   help="build the dense index as HNSW with M links per node (default M=32) instead of flat")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="bad rows (missing/duplicate id, non-string text, invalid JSON): stop, or skip and count")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue an interrupted run into COLLECTION")
    again.add_argument("--overwrite", action="store_true", help="replace the collection already in COLLECTION; it is kept (in COLLECTION/.lsr-replaced) "
                                                             "until the new one is whole, and put back if the run fails "
                                                             "before its first checkpoint")
    p.add_argument("--shards", type=int, default=1, metavar="N",
                   help="split the collection into N shards by a hash of the document id (each a complete collection, "
                        "with collection-wide statistics; served by `lsr serve`); default 1: one unsharded collection; "
                        "at most 256")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where documents are encoded: this process (local, default) or a pool of Ray encoder actors "
                        "(one GPU each, else a CPU share); the collection is byte-identical either way for the same "
                        "model, device and dtype (on CPU also the same --threads: actors without it use their CPU "
                        'share as --threads). Ray is an extra: pip install "ray[data]>=2.60"')
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="--engine ray: auto, HOST:PORT or ray://HOST:PORT of a running cluster (default: start a "
                        "local Ray instance, whatever RAY_ADDRESS says); COLLECTION must be on storage every node sees")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--engine ray: encoder actors (default: one per GPU, else one per node using all its CPUs)")
    p.add_argument("--pre-encoded", action="store_true",
                   help="SOURCE is a vectors .parquet from `lsr encode --input ... --output ...`: index its vectors as they are")
    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lsr.ingest.layout import BUILD_STATE, REPLACED, check_utf8_path, is_collection_dir
    from lsr.ingest.corpus import check_read_options
    from lsr.ingest.indexing import IndexOptions, ResumeRefused, build_collection, recorded_max_length
    from lsr.ingest.sharding import check_shard_count, refuse_shard_folder

    check_shard_count(args.shards)
    refuse_shard_folder(Path(args.out), "index into")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    model, max_length = args.model or "splade-tiny", args.max_length
    if args.resume and max_length is None:  # continue at the length the build recorded
        max_length = recorded_max_length(Path(args.out))
    if args.pre_encoded:
        from lsr.ingest.vector_file import VectorFileReader

        named = VectorFileReader(args.source)
        other_length = named.max_length is not None and args.max_length != named.max_length
        given = flags_given(args, "fields", "id_field", *(["max_length"] if other_length else []))
        refuse_unused(given,
                      f"{args.source} holds the ids, texts and vectors to index"
                      + (f" (encoded at {named.max_length} tokens)" if named.max_length else ""))
        model, max_length = args.model or named.model or model, named.max_length or max_length
    options = IndexOptions(
        model=model,
        dense_model=None if args.dense.lower() == "none" else args.dense,
        bm25=args.bm25 == "english",
        fields=args.fields,
        id_field=args.id_field,
        batch_size=args.batch_size,
        max_length=max_length,
        limit=args.limit,
        on_error=args.on_error,
        checkpoint_every=args.checkpoint_every,
        hnsw_m=args.hnsw,
        threads=args.threads,
        pre_encoded=args.pre_encoded,
        shards=args.shards,
        **device_options(args),
    )
    if options.dense_model is None and args.hnsw is not None:
        raise ValueError("--hnsw builds the dense index as HNSW, and --dense none builds no dense index")
    options.check()  # a bad number (--batch-size 0, --threads 0) is the only line too, not one after "indexing ..."
    check_utf8_path(Path(args.out).expanduser().absolute())
    ray = _ray_options(args, options)
    if not args.pre_encoded:  # a bad flag is the only line, not one after "indexing ..."
        check_read_options(Path(args.source).expanduser(), options.fields, options.id_field, options.on_error,
                           options.limit)
    if not args.quiet:
        layout = "vectors/, docs/, sparse/" + (", dense/" if options.dense_model else "") + (", bm25/" if options.bm25 else "")
        if options.shards > 1:
            layout = f"{options.shards} shards shard-000/.. each with {layout}"
        print(f"indexing {args.source} into {args.out} ({layout}; checkpointed every {args.checkpoint_every:,} docs)",
              file=sys.stderr)
    had_collection = is_collection_dir(Path(args.out))
    try:
        summary = build_collection(args.source, args.out, options, resume=args.resume, overwrite=args.overwrite,
                                   progress=not args.quiet, ray=ray)
    except BaseException as exc:
        interrupted, aside = isinstance(exc, KeyboardInterrupt), Path(args.out) / REPLACED
        if (Path(args.out) / BUILD_STATE).is_file():
            if interrupted:
                print(f"stopped; the encoded shards are kept. Continue with: {resume_command(args._argv)}", file=sys.stderr)
            elif not isinstance(exc, (FolderBusyError, ResumeRefused, FileExistsError)):  # a full disk, a lost Ray
                # cluster, a bad row (a refused start into an unfinished build says itself how to go on)
                print(f"the encoded shards are kept; once the cause below is fixed, continue with: "
                      f"{resume_command(args._argv)}", file=sys.stderr)
            if aside.is_dir():  # twice the disk until then: say where it is and how to keep it instead
                print(f"the collection --overwrite replaces stays in {aside} until the new one is whole (to keep it "
                      f"instead, delete the rest of {args.out} and move its contents back)", file=sys.stderr)
        elif interrupted and args.overwrite and had_collection:  # with no collection there, nothing was had
            print(f"stopped before the first checkpoint; {args.out} holds the collection it had.", file=sys.stderr)
        elif interrupted:
            print("stopped before the first checkpoint; nothing was kept. Run the same command again.", file=sys.stderr)
        raise
    if summary.already_complete:
        print(f"{args.out} is already complete; nothing to resume.")
    print(summary.format())
    if options.shards > 1:
        print(f"sharded collection ({options.shards} shards) written to {args.out}; try: lsr search "
              f"{shell_word(args.out)} \"your question\", or serve it with: lsr serve {shell_word(args.out)}")
    else:
        print(f"collection written to {args.out}; try: lsr search {shell_word(args.out)} \"your question\"")
    return 0


def _ray_options(args: argparse.Namespace, options):
    """RayOptions for --engine ray, checked before anything prints (Ray missing or unreachable is one line)."""
    if args.engine != "ray":
        if args.ray_address is not None or args.workers is not None:
            raise ValueError("--ray-address and --workers need --engine ray")
        return None
    from lsr.ingest.ray_engine import RayOptions, check_ray

    ray = RayOptions(args.ray_address, args.workers)
    check_ray(ray, options)
    return ray


def resume_command(argv: list[str]) -> str:
    """The command as it was typed, with --resume in place of --overwrite, ready to copy."""
    words = [word for word in argv if word != "--overwrite"]
    return shlex.join(["lsr", *words, *([] if "--resume" in words else ["--resume"])])
