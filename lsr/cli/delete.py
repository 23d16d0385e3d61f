"""Delete documents of a collection by id: in the collection folder, or through a running `lsr serve` (--endpoint).

The ids come as arguments, or one per line from --ids-file (`-` reads standard input; a line that is not one id
is refused, naming it). They are deleted in one atomic, durable write (in a sharded collection, one per shard); a
server holding the collection takes it up within a second. Ids the collection does not hold are listed on standard
error and change nothing; the exit status is 0 when at least one id was deleted, else 1.

Examples:
  lsr delete runs/scifact 4983 5836
  lsr delete runs/scifact --ids-file stale-ids.txt
  cut -f1 removed.tsv | lsr delete --endpoint search.internal:50051 --ids-file -
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lsr.cli.endpoint import add_endpoint_arguments, connect, refuse_connection_flags
from lsr.cli.main import path_argument
from lsr.cli.upsert import uninterrupted
from lsr.ingest.layout import is_collection_dir

HELP = "delete documents of a collection (or a running server) by id"
MAX_IDS = 1_000_000  # ids in one delete: a server's request limit is 64 MiB


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs="*", metavar="COLLECTION ID",
                   help="the collection folder, then the ids (with --endpoint: the ids only)")
    p.add_argument("--ids-file", type=path_argument, help="file of ids, one per line (- reads standard input)")
    add_endpoint_arguments(p, required=False)


def run(args: argparse.Namespace) -> int:
    from lsr.sparse import id_problem, short_repr

    words = list(args.words)
    if args.endpoint and words and _names_a_collection(words[0]):  # was deleted as an id, "not found"
        raise ValueError(f"give either COLLECTION ({words[0]}) or --endpoint {args.endpoint} (a running server), not "
                         "both: with --endpoint every word is an id")
    collection = None if args.endpoint else (words.pop(0) if words else None)
    if collection is None and not args.endpoint:
        raise ValueError("give COLLECTION (a folder written by `lsr index`) or --endpoint HOST[:PORT]")
    if collection is not None:
        refuse_connection_flags(args)
    for doc_id in words:  # as --ids-file's are: "not in the collection", exit 1 (retry), for `lsr delete col "a b"`
        problem = id_problem(doc_id)
        if problem is not None:
            raise ValueError(f"id {short_repr(doc_id)} {problem}")
    ids = words + _read_ids(args.ids_file)
    ids = list(dict.fromkeys(doc_id for doc_id in ids if doc_id))
    if not ids:
        raise ValueError("no ids to delete; give them after the collection or with --ids-file")
    if len(ids) > MAX_IDS:
        raise ValueError(f"{len(ids):,} ids in one delete; give at most {MAX_IDS:,} per run")
    where = collection or f"the server at {args.endpoint}"
    not_found = _delete(collection, ids) if collection else _delete_remote(args, ids)
    deleted = len(ids) - len(not_found)
    print(f"deleted {deleted:,} of {len(ids):,} documents from {where}")
    if not_found:
        shown = ", ".join(not_found[:10]) + (f" and {len(not_found) - 10:,} more" if len(not_found) > 10 else "")
        print(f"not in the collection: {shown}", file=sys.stderr)
    return 0 if deleted else 1


def _names_a_collection(word: str) -> bool:
    """Whether the first word after --endpoint is a collection's folder; an id no path can be (300 bytes: "File name
    too long") is none."""
    try:
        return is_collection_dir(Path(word).expanduser())
    except OSError:
        return False


def _read_ids(path: str | None) -> list[str]:
    """The ids of --ids-file, read as any text file (standard input too: its BOM went into the first id, its
    undecodable bytes into surrogate escapes); a line that is no id (`72159<TAB>comment`) is refused before anything
    is deleted, where it was "not in the collection" and the document stayed."""
    if path is None:
        return []
    from lsr.files import read_text_file, text_lines
    from lsr.sparse import id_problem, short_repr

    lines = text_lines(read_text_file("/dev/stdin" if path == "-" else path, "--ids-file"))
    ids = [(line_no, line.strip()) for line_no, line in enumerate(lines, start=1) if line.strip()]  # " d1 " meant d1
    for line_no, doc_id in ids:
        problem = id_problem(doc_id)
        if problem is not None:
            source = "standard input" if path == "-" else path
            raise ValueError(f"--ids-file {source} line {line_no}: id {short_repr(doc_id)} {problem}")
    return [doc_id for _, doc_id in ids]


def _delete(collection: str, ids: list[str]) -> list[str]:
    from lsr.ingest.writer import CollectionWriter

    if not Path(collection).expanduser().is_dir():
        raise FileNotFoundError(f"{collection} is not a folder; give the collection `lsr index` wrote")
    writer = CollectionWriter(collection)
    try:
        with uninterrupted():
            return writer.delete(ids)
    finally:
        writer.close()


def _delete_remote(args: argparse.Namespace, ids: list[str]) -> list[str]:
    import grpc

    from lsr.service.client import call_failed

    with connect(args) as client:
        try:
            with uninterrupted():
                return client.delete(ids)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # the server's answer when it held none of them
                return ids
            raise call_failed(exc, "a rerun names the ids it removed as not there (exit 1 when that is all of "
                                   "them)") from None
