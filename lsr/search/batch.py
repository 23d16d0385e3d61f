"""Batch search: a list of topics through one Searcher into a TREC run file, with progress (pyserini's habit)."""

from __future__ import annotations

import gzip
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lsr.encode.checks import check_whole
from lsr.eval.runs import write_trec_run
from lsr.files import write_output
from lsr.ingest.progress import progress_bar
from lsr.search.searcher import HybridOptions, PrfOptions, Searcher
from lsr.sparse import short_repr


@dataclass
class WrittenRun:
    """What ``search_topics`` wrote: hits, and the queries that found no document (a TREC run has no line for them,
    so trec_eval leaves them out of its means unless run with -c)."""

    hits: int = 0
    without_hits: list[str] = field(default_factory=list)


def topic_list(topics: Iterable[tuple[Any, str]]) -> list[tuple[str, str]]:
    """(qid, text) pairs as a list, each qid a str (a whole number becomes one) and given once: a repeated qid
    wrote its hits twice into one run, which evaluation then refused or counted twice."""
    if not isinstance(topics, Iterable):  # "'NoneType' object is not iterable" named nothing
        raise TypeError(f"topics must be (qid, text) pairs, got {type(topics).__name__}")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, pair in enumerate(topics):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"topics[{i}] is not a (qid, text) pair: {short_repr(repr(pair))}")
        qid, text = pair
        if isinstance(qid, (int, np.integer)) and not isinstance(qid, bool):
            qid = str(qid)
        if not isinstance(qid, str):
            raise TypeError(f"topics[{i}] has the query id {qid!r}; a query id is a str (or a whole number)")
        if qid in seen:
            raise ValueError(f"query id {qid!r} appears twice in the topics (again at topics[{i}])")
        seen.add(qid)
        out.append((qid, text))
    return out


def search_topics(searcher: Searcher, topics: Iterable[tuple[str, str]], output: str | Path, *, k: int = 1000,
                  mode: str = "sparse", hybrid: HybridOptions | None = None, prf: PrfOptions | None = None,
                  tag: str = "lsr", threads: int = 1, progress: bool = True, bound_factor: float = 1.0) -> WrittenRun:
    """Search every (qid, text) and write the run atomically (a stopped run leaves no half file), or to standard
    output when ``output`` is ``-``."""
    if any(c.isspace() for c in tag) or not tag:
        raise ValueError(f"the run tag must be one word, got {tag!r}")
    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a file path, or \"-\" for standard output; got {type(output).__name__}")
    if str(output) != "-":
        check_outside(Path(output), searcher.path)
    check_whole(threads, "threads", 1)  # -3 ran on one thread, where batch_search refused it
    topics = topic_list(topics)
    written = WrittenRun()

    def write(fh) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="\n")
        with progress_bar("search", len(topics), enabled=progress, unit="query") as bar:
            for chunk, results in searcher.search_chunks(topics, k, threads, mode=mode, hybrid=hybrid, prf=prf,
                                                         bound_factor=bound_factor):
                for (qid, _), result in zip(chunk, results):
                    write_trec_run(text, qid, [(h.doc_id, h.score) for h in result.hits], tag)
                    written.hits += len(result.hits)
                    if not result.hits:
                        written.without_hits.append(qid)
                bar.update(len(chunk))
        text.flush()
        text.detach()

    if str(output) == "-":  # standard output, for a pipe: nothing to keep atomic
        write(sys.stdout.buffer)
        sys.stdout.flush()
    elif str(output).lower().endswith(".gz"):  # as named: `lsr eval` reads it so (it was plain text, which it refused)
        write_output(Path(output), lambda fh: _gzipped(fh, write))
    else:
        write_output(Path(output), write)
    return written


def check_outside(output: Path, collection: Path, name: str = "output") -> None:
    """A run may not be written into the collection it searched: a run in place of lsr.json left a collection that
    no longer opened, and any other file there is one ``lsr verify`` does not know."""
    if output.resolve().is_relative_to(collection.resolve()):
        raise ValueError(f"{name} {output} lies inside the collection {collection}; write the run outside it")


def _gzipped(fh, write) -> None:
    """``write`` through gzip into ``fh``; no time stamp in the header, so the same run gives the same bytes."""
    with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as packed:
        write(packed)
