"""Add or replace documents of a collection from a corpus file: into the collection folder, or through a running
`lsr serve` (--endpoint), which encodes them.

SOURCE is read as `lsr index` reads it (BEIR folder/archive, .jsonl(.gz), .parquet, .csv, .txt; the same --fields
and --id-field). A document whose id the collection holds replaces it. Documents are written --write-every at a
time, each write atomic and durable (in a sharded collection, per shard); a server holding the collection takes a
write up within a second. A run stopped anywhere (Ctrl-C, an error, kill -9) keeps every write it finished:
running it again is safe (an upsert replaces by id), and --skip N, printed when it stops, starts after them.

Examples:
  lsr upsert new-docs.jsonl runs/scifact
  lsr upsert updates.csv runs/docs --id-field doc_id --fields body
  lsr upsert new-docs.jsonl --endpoint search.internal:50051 --auth-token-file token.txt
  lsr upsert big.jsonl.gz runs/big --skip 120000          # after a run that stopped at 120,000 documents
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from lsr.cli.device import add_device_arguments, device_options
from lsr.cli.endpoint import add_endpoint_arguments, connect, refuse_connection_flags
from lsr.cli.main import fields_argument, flags_given, name_argument, path_argument, refuse_unused
from lsr.files import MachineStateError, stop_signals
from lsr.ingest.layout import is_collection_dir

HELP = "add or replace documents of a collection (or a running server) from a corpus file"
WRITE_EVERY = 256  # documents per write: a Ctrl-C loses at most their encoding (about 2 s here), never a write


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lsr.ingest.corpus import ON_ERROR

    p.add_argument("source", type=path_argument, metavar="SOURCE", help="BEIR folder/.zip/.tar.gz, .jsonl(.gz), .parquet, .csv(.gz) or .txt")
    p.add_argument("collection", type=path_argument, metavar="COLLECTION", nargs="?",
                   help="collection folder written by `lsr index` (or give --endpoint)")
    p.add_argument("--fields", type=fields_argument, help="text fields joined with a space, in order (default: those the collection was "
                                     "built from; title,text with --endpoint; as `lsr index`, pyserini's contents when "
                                     "the corpus has neither)")
    p.add_argument("--id-field", type=name_argument, help="document id field/column (default: the collection's; _id with --endpoint; as "
                                      "`lsr index`, else id, docid or doc_id, whichever the corpus has)")
    p.add_argument("--on-error", choices=ON_ERROR, default="fail",
                   help="bad rows (missing/duplicate id, non-string text, invalid JSON): stop, or skip and count")
    p.add_argument("--limit", type=int, help="write only the first N good documents (those --skip leaves out count)")
    p.add_argument("--skip", type=int, default=0, metavar="N",
                   help="leave out the first N good documents (those a stopped run wrote)")
    p.add_argument("--write-every", type=int, default=WRITE_EVERY, metavar="N",
                   help=f"documents per write (default {WRITE_EVERY})")
    p.add_argument("--batch-size", type=int, default=32, help="documents per forward pass (default 32)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: every CPU this process may use)")
    add_device_arguments(p)
    add_endpoint_arguments(p, required=False, timeout=300.0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from lsr.ingest.collection import CollectionReplaced
    from lsr.ingest.indexing import document_blocks
    from lsr.ingest.progress import progress_bar, rows_total, update_total

    target = _target(args)
    for flag, value in (("--write-every", args.write_every), ("--batch-size", args.batch_size)):
        if value <= 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.skip < 0 or (args.limit is not None and args.limit <= 0):
        raise ValueError("--skip must be 0 or more and --limit positive")
    sink = _LocalSink(args) if target == "collection" else _RemoteSink(args)
    built = getattr(sink, "meta", {})  # a folder's build names the fields it read; a server's is not asked
    reader = _corpus(args, built)
    done = replaced = truncated = seen = 0  # seen: good documents read, the skipped ones too
    writing = 0  # documents of the write under way: one that fails after its journal record may have been kept
    started = time.perf_counter()
    try:
        with progress_bar("upsert", rows_total(reader.expected_rows(), reader.limit), enabled=not args.quiet) as bar:
            for block in document_blocks(reader, args.write_every):
                first = max(0, args.skip - seen)
                seen += len(block)
                if first < len(block):
                    block = block.slice(first)
                    with uninterrupted():  # a Ctrl-C waits for the write it falls in (and its count): never half-done
                        writing = len(block)
                        replaced_now, cut = sink.write(block.ids, block.texts)
                        done, replaced, truncated = done + len(block), replaced + replaced_now, truncated + cut
                        writing = 0
                bar.update(seen - bar.n)
                update_total(bar, reader, reader.expected_rows(), reader.limit)
    except BaseException as exc:
        sink.close()
        if isinstance(exc, CollectionReplaced) and exc.gone:  # "they are kept ... --skip 96" dropped 96 documents
            gone = f"; the {done:,} documents written went with the build it had opened" if done else ""
            raise MachineStateError(f"{exc.what} (`lsr index --overwrite`?){gone}: run the whole upsert again, "
                                    f"{_continue_command(args._argv, args.skip)}") from None
        # the disk's failure, not a refused or late request; a journal that could not be opened for writing (a
        # read-only folder) took nothing
        writing = writing if isinstance(exc, OSError) and not _journal_refused(exc) else 0
        if done or args.skip or writing:
            failed = (f" The {writing:,} after them failed as they were written and may be kept too (what the "
                      "journal took is applied when the collection is next opened); rewriting them is harmless."
                      if writing else "")
            print(f"stopped after writing {done:,} documents into {_where(args)}; they are kept.{failed} Continue "
                  f"with: {_continue_command(args._argv, args.skip + done)}", file=sys.stderr)
        raise
    sink.close()
    seconds = time.perf_counter() - started
    if not done:
        raise ValueError(f"{args.source} has no documents to write" + (f" after the first {args.skip:,}" if args.skip else "")
                         + (f" (--limit {args.limit:,} counts the documents --skip leaves out)" if args.limit else ""))
    details = [f"{done - replaced:,} new, {replaced:,} replaced"] if target == "collection" else []
    if truncated:
        details.append(f"{truncated:,} longer than the collection's {built.get('max_length', 256)} SPLADE tokens, cut")
    if reader.stats.n_skipped:
        details.append(f"{reader.stats.n_skipped:,} bad rows skipped ("
                       + ", ".join(f"{count:,} {reason}" for reason, count in reader.stats.skipped.items()) + ")")
    print(f"upserted {done:,} document{'s' * (done != 1)} into {_where(args)} in {seconds:.1f} s "
          f"({done / seconds:.1f} docs/s)"
          + (f": {'; '.join(details)}" if details else ""))
    if blank := reader.stats.blank_warning(args.source, reader.fields, "written"):  # as `lsr index` says it
        print(f"warning: {blank}", file=sys.stderr)
    return 0


def _corpus(args: argparse.Namespace, built: dict) -> Any:
    """SOURCE's reader: the fields and id field given, else those the collection's build read."""
    from lsr.ingest.corpus import DEFAULT_FIELDS, DEFAULT_ID_FIELD, CorpusReader

    if str(args.source).lower().endswith(".txt"):  # lines, no columns: the build's fields name none of them
        built = {}
    fields = list(args.fields) if args.fields else built.get("fields", DEFAULT_FIELDS)
    id_field = args.id_field or built.get("settings", {}).get("id_field", DEFAULT_ID_FIELD)
    return CorpusReader(args.source, fields=fields, id_field=id_field, on_error=args.on_error, limit=args.limit)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP held until the block ends, then raised as usual, so a write is never cut mid-way (a
    handler, not a signal mask: a mask holds one thread's signals, and the others would take them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {number: signal.signal(number, lambda received, _frame: held.append(received))
                for number in stop_signals()}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0])


def _target(args: argparse.Namespace) -> str:
    if (args.collection is None) == (args.endpoint is None):
        raise ValueError("give either COLLECTION (a folder) or --endpoint HOST[:PORT] (a running server), not both"
                         if args.collection else "give COLLECTION (a folder written by `lsr index`) or --endpoint HOST[:PORT]")
    return "collection" if args.collection else "endpoint"


def _where(args: argparse.Namespace) -> str:
    return args.collection or f"the server at {args.endpoint}"


def _journal_refused(exc: OSError) -> bool:
    """Whether the journal took nothing of the write (a read-only folder, a full disk): "the 3 after them ... may be
    kept too; continue with --skip 0" was said."""
    from lsr.ingest.journal import NotJournaled

    return isinstance(exc, NotJournaled)


def _continue_command(argv: list[str], skip: int) -> str:
    """The command as typed, with ``--skip`` set to ``skip`` (none for 0), ready to copy."""
    words, drop = [], False
    for word in argv:
        if drop:
            drop = False
        elif word == "--skip":
            drop = True
        elif not word.startswith("--skip="):
            words.append(word)
    return shlex.join(["lsr", *words, *(["--skip", str(skip)] if skip else [])])


class _LocalSink:
    """Writes into the collection folder: encoded here, with the collection's models."""

    def __init__(self, args: argparse.Namespace) -> None:
        from lsr.encode.cpu_threads import set_threads
        from lsr.ingest.writer import CollectionWriter

        refuse_connection_flags(args)
        options = device_options(args)  # a GPU asked for and missing fails here, before the collection opens
        if not Path(args.collection).expanduser().is_dir():
            if is_collection_dir(Path(args.source).expanduser()):
                raise ValueError(f"{args.source} is a collection and {args.collection} is not: the corpus comes first "
                                 f"(`lsr upsert {args.collection} {args.source}`)")
            raise FileNotFoundError(f"{args.collection} is not a folder; create the collection with `lsr index`")
        set_threads(args.threads)
        self.writer = CollectionWriter(args.collection, **options)
        self.meta = self.writer.meta
        self.batch_size = args.batch_size

    def write(self, ids: list[str], texts: list[str]) -> tuple[int, int]:
        """(how many of ``ids`` it replaced, how many texts were cut)."""
        sparse, dense, truncated = self.writer.encode(texts, self.batch_size)
        replaced = self.writer.known(ids)
        self.writer.upsert(ids, texts, sparse, dense)
        return replaced, truncated

    def close(self) -> None:
        self.writer.close()


class _RemoteSink:
    """Sends the texts to a running server, which encodes and writes them."""

    def __init__(self, args: argparse.Namespace) -> None:
        refuse_unused(flags_given(args, "threads", "device", "dtype", "batch_size"),  # --batch-size was ignored
                      "they choose how this process encodes; with --endpoint the server encodes (`lsr serve --device ...`)")
        self.client = connect(args)

    def write(self, ids: list[str], texts: list[str]) -> tuple[int, int]:
        import grpc

        from lsr.service.client import call_failed

        try:
            self.client.upsert(ids, texts, allow_empty=True)  # as `lsr index` indexes an empty document
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (exc.details() or ""):
                raise _over_request_limit(exc.details(), ids, texts) from None
            raise call_failed(exc, "rerunning it is safe (an upsert replaces by id)") from None
        return 0, 0

    def close(self) -> None:
        self.client.close()


def _over_request_limit(details: str, ids: list[str], texts: list[str]) -> ValueError:
    """gRPC's "Received message larger than max (N vs. M)" as what to fix (exit 2: a retry meets the same limit).
    The client sends messages of at most 512 KiB, a longer document alone: that document is too long, or the
    server's limit is under 512 KiB."""
    import re

    size, doc_id = max((len(text.encode("utf-8", "surrogatepass")), doc_id) for doc_id, text in zip(ids, texts))
    found = re.search(r"vs\.? (\d+)\)", details)
    limit = int(found.group(1)) if found else None
    said = f"the server's {limit / 2**20:g} MiB request limit" if limit else "the server's request limit"
    if limit is not None and size + 1024 < limit:  # the largest document fits: the message held several
        return ValueError(f"a request of several documents passed {said} ({details}); start `lsr serve` with "
                          "--max-message-mb 1 or more")
    return ValueError(f"document {doc_id!r} holds {size / 2**20:.1f} MiB of text, over {said}; start `lsr serve` with "
                      "a larger --max-message-mb, or leave the document out")
