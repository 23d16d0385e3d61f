"""The coordinator of a sharded collection: one Searcher whose legs run on the shards.

It loads the encoders once and encodes every query and document here; shards only search and
store vectors. A search fans the encoded query out to every shard, which returns each leg's own
top-n; the union of those lists holds the global top-n (a document outside its shard's top-n
has n better documents there), so the coordinator keeps the n best, ranks them like one index
would (score, then doc id) and hands them to the unchanged Searcher pipeline: fusion, PRF (its
feedback vectors fetched from their owners) and the final top-k are the unsharded code.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lsr.ingest.collection import CollectionReplaced, build_tag
from lsr.ingest.layout import read_meta, usable_search_defaults
from lsr.ingest.sharding import global_doc_freqs, read_shard_map
from lsr.search.fusion import Ranking, rank
from lsr.search.legs import Bm25Query, LegQueries
from lsr.search.models import SearchModels
from lsr.search.searcher import WARM_UP_QUERY, HybridOptions, PrfOptions, Searcher, check_open_options, check_path
from lsr.service.local_shards import LocalShards
from lsr.service.shard_set import ShardOptions, ShardSet
from lsr.sparse import SparseBatch, as_id


REOPEN_WAIT_S = 120.0  # a reload waits this long for the new build's shard servers, then closes them and tries again
WARM_UP_WAIT_S = 5.0  # a server's warm-up waits this long for starting shard servers, then warms its encoders only


def _first_meta(paths: Sequence[Path]) -> dict:
    """The first shard's ``lsr.json`` that reads (the models and settings are the whole collection's): a shard whose
    folder is missing or damaged at the start is served as down, its searches partial and health NOT_SERVING, until it
    comes back; shard-000 so refused the start, where any other did not."""
    failed: Exception | None = None
    for path in paths:
        try:
            return read_meta(path)
        except (OSError, ValueError) as exc:
            failed = failed or exc
    raise failed


def merge_runs(parts: Sequence[Ranking], depth: int) -> Ranking:
    """The global top ``depth`` of disjoint shards' top-``depth`` lists, best first (ties by doc id)."""
    merged: Ranking = {}
    for part in parts:
        merged.update(part)
    return dict(rank(merged, depth))


class ShardLegs:
    """One search's legs across the shards: what answered, and the shard views its later calls read."""

    def __init__(self, shards: ShardSet, deadline: float | None) -> None:
        self.shards = shards
        self.deadline = deadline
        self._tokens: dict[int, int] = {}
        self._versions: dict[int, str] = {}  # of the views pinned by ``_tokens``
        self._missing: set[int] = set()

    @property
    def answered(self) -> tuple[str, ...]:
        return tuple(self.shards.names[s] for s in sorted(self._tokens) if s not in self._missing)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(self.shards.names[s] for s in sorted(self._missing))

    def runs(self, queries: LegQueries, depth: int, timings: dict[str, float]) -> dict[str, Ranking]:
        everyone = range(len(self.shards.names))
        pinned = {shard: (queries, depth, self._tokens.get(shard)) for shard in everyone}  # a PRF pass: the first's
        answers, missing = self.shards.call("runs", pinned, self.deadline)
        self._missing.update(missing)
        for shard, (token, _runs, _seconds, version, _new_words) in answers.items():
            self._tokens.setdefault(shard, token)
            self._versions.setdefault(shard, version)
            self.shards.versions[shard] = version
        for leg in queries:  # the slowest shard is what the caller waited for
            timings[leg] = timings.get(leg, 0.0) + max((a[2].get(leg, 0.0) for a in answers.values()), default=0.0)
        runs = {leg: [a[1][leg] for a in answers.values()] for leg in queries}
        if "bm25" in queries:
            runs["bm25"] = self._bm25_with_whole_doc_freqs(queries["bm25"], depth, answers, runs["bm25"], timings)
        return {leg: merge_runs(parts, depth) for leg, parts in runs.items()}

    def _bm25_with_whole_doc_freqs(self, text: str, depth: int, answers: dict, parts: list[Ranking],
                                   timings: dict[str, float]) -> list[Ranking]:
        """The BM25 runs again where a shard scored a word the build never saw with its own document frequency but
        others hold it too: with the sum, as the unsharded collection scores it (a second round only then)."""
        summed: dict[str, int] = {}
        for answer in answers.values():
            for word, count in answer[4].items():
                summed[word] = summed.get(word, 0) + count
        again = [shard for shard, answer in answers.items() if any(summed[word] != count for word, count in answer[4].items())]
        if not again:
            return parts
        query = {"bm25": Bm25Query(text, summed)}
        pinned = {shard: (query, depth, self._tokens.get(shard)) for shard in again}
        redone, missing = self.shards.call("runs", pinned, self.deadline)
        self._missing.update(missing)
        timings["bm25"] = timings.get("bm25", 0.0) + max((a[2].get("bm25", 0.0) for a in redone.values()), default=0.0)
        positions = {shard: i for i, shard in enumerate(answers)}
        for shard in again:  # one lost now is reported missing, its first answer dropped
            parts[positions[shard]] = redone[shard][1]["bm25"] if shard in redone else {}
        return parts

    def sparse_vectors(self, doc_ids: Sequence[str]) -> SparseBatch:
        parts, order = self._fetch("sparse_vectors", doc_ids)
        return SparseBatch.concat(parts).select(order)

    def dense_vectors(self, doc_ids: Sequence[str]) -> np.ndarray:
        parts, order = self._fetch("dense_vectors", doc_ids)
        return np.concatenate(parts)[order]

    def text(self, doc_ids: Sequence[str]) -> list[str | None]:
        parts, order = self._fetch("text", doc_ids)
        flat = [text for part in parts for text in part]
        return [flat[i] for i in order]

    def version(self) -> str:
        """Each shard's version this search read (the last seen for a shard it has not asked), in shard order."""
        return ".".join(self._versions.get(s, seen) for s, seen in enumerate(self.shards.versions))

    def doc_freqs_version(self) -> str:
        return "/".join(self.shards.versions)

    def doc_freqs(self) -> tuple[np.ndarray, int]:
        """Summed over every shard: PRF's IDF filter needs the whole collection's, so a missing shard fails it."""
        answers, _ = self.shards.call("doc_freqs", {s: () for s in range(len(self.shards.names))}, self.deadline,
                                      strict=True)
        return global_doc_freqs(answers.values())

    def _fetch(self, method: str, doc_ids: Sequence[str]) -> tuple[list[Any], np.ndarray]:
        """Each owner's answer for its ids (read from the view this search pinned), and the order that
        puts the concatenated answers back in ``doc_ids`` order. A missing owner fails the search."""
        groups = _by_owner(self.shards, doc_ids)
        answers, _ = self.shards.call(
            method, {shard: (ids, self._tokens.get(shard)) for shard, (_, ids) in groups.items()}, self.deadline,
            strict=True)
        positions = np.concatenate([np.asarray(groups[shard][0], np.int64) for shard in groups])
        return [answers[shard] for shard in groups], np.argsort(positions, kind="stable")


def _by_owner(shards: ShardSet, doc_ids: Sequence[str]) -> dict[int, tuple[list[int], list[str]]]:
    """shard → (positions in ``doc_ids``, ids) for the ids it owns, in shard order."""
    return {shard: (positions, [str(doc_ids[p]) for p in positions])
            for shard, positions in shards.shard_map.positions_by_owner(doc_ids).items()}


@dataclass
class _WholeCollection:
    """The whole collection's document frequencies (the sum over shards), for the inference-free query IDF. The
    first sum waits for every shard to come up; later ones (after writes) fail at once while one is down."""

    shards: ShardSet
    timeout: float = 300.0
    _summed_once: bool = False

    def doc_freqs_version(self) -> str:
        return "/".join(self.shards.versions)

    def doc_freqs(self) -> tuple[np.ndarray, int]:
        if not self._summed_once and not self.shards.wait_all_up(self.timeout):
            raise RuntimeError(f"not every shard came up within {self.timeout:g} s ({self.shards.down_reasons()}); "
                               "the inference-free query encoder needs all of their document frequencies")
        summed = ShardLegs(self.shards, None).doc_freqs()
        self._summed_once = True
        return summed


class ShardedSearcher(Searcher):
    """A Searcher over a sharded collection: encoders here, legs on the shard servers."""

    sharded = True

    def __init__(self, root: Path, shards: ShardSet | LocalShards, meta: dict, models: SearchModels,
                 options: ShardOptions | None = None) -> None:
        """``options``: how ``shards`` were started on Ray (None: in this process), for ``reopen``."""
        super().__init__(None, models)
        self.root = root
        self.shards = shards
        self._meta = meta
        self._options = options

    @classmethod
    def open(cls, path: str | Path, *, query_encoder: str = "auto", device: str = "auto", dtype: str = "auto",
             threads: int | None = None, options: ShardOptions | None = None,
             in_process: bool = False) -> "ShardedSearcher":
        """Start the shard servers (they come up while the models load) and load the models once, here.
        ``in_process``: open every shard in this process instead, without Ray (``LocalShards``: `lsr search`)."""
        root = Path(check_path(path)).expanduser().absolute()  # the shard servers' paths, whatever their working folder
        check_open_options(query_encoder, threads, device, dtype)
        return cls._started(root, None if in_process else options or ShardOptions(),
                            lambda meta, whole: SearchModels(meta, query_encoder, doc_freqs=lambda: whole,
                                                             device=device, dtype=dtype))

    @classmethod
    def _started(cls, root: Path, options: ShardOptions | None,
                 models_for: Callable[[dict, _WholeCollection], SearchModels]) -> "ShardedSearcher":
        shard_map = read_shard_map(root)
        meta = _first_meta(shard_map.paths(root))
        shards = LocalShards(root, shard_map) if options is None else ShardSet(root, shard_map, options)
        try:
            models = models_for(meta, _WholeCollection(shards))
            models.query, models.dense  # noqa: B018 - loaded now, while the shard servers start
        except BaseException:
            shards.close()
            raise
        return cls(root, shards, meta, models, options)

    def reopen(self, stop: threading.Event | None = None, wait: float = REOPEN_WAIT_S) -> "ShardedSearcher":
        """The collection opened again (a new build there, with as many shards as it has now) with these options,
        once every one of its shard servers is up (at most ``wait`` seconds, or until ``stop`` is set: a reload must
        not swap in a partial collection); CollectionReplaced where the folder changed again meanwhile. The models
        that build names as this one did are shared, not loaded again. The shard servers serving now keep theirs
        until this one is closed: for a moment both builds hold their CPUs on Ray."""
        searcher = self._started(self.root, self._options,
                                 lambda meta, whole: self.models.like(meta, doc_freqs=lambda: whole))
        give_up = time.monotonic() + wait
        while not searcher.shards.wait_all_up(0.1) or searcher.shards.replaced:
            if searcher.shards.replaced or time.monotonic() > give_up or stop is not None and stop.is_set():
                replaced, down = searcher.shards.replaced, searcher.shards.down_reasons()
                searcher.close()
                if replaced:
                    raise CollectionReplaced(f"{self.root} was indexed anew again while its shard servers started",
                                             "to serve the newest build")
                raise RuntimeError("the server is stopping" if stop is not None and stop.is_set() else
                                   f"the new build's shard servers did not all come up within {wait:g} s: {down}")
        return searcher

    def when_replaced(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` once a shard server finds its shard indexed anew (or moved or deleted)."""
        self.shards.when_replaced(listener)

    # ------------------------------------------------------------------ facts
    @property
    def path(self) -> Path:
        return self.root

    @property
    def meta(self) -> dict:
        return self._meta

    @property
    def index_version(self) -> str:
        """``<build>-<versions>``: the build's tag (its first shard's seal) and one version per shard, as last seen:
        it changes whenever any shard's does, and with every build (each shard's counts writes from 1 again)."""
        self.check_open()
        return self.tagged(".".join(self.shards.versions))

    def tagged(self, version: str) -> str:
        return f"{build_tag(self._meta)}-{version}"

    @property
    def has_bm25(self) -> bool:
        return bool(self._meta.get("bm25"))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def dense_dim(self) -> int | None:
        return int(self.dense_encoder.dim) if self.dense_encoder is not None else None

    @cached_property
    def search_defaults(self) -> dict:
        """What `lsr tune` stored beside the shard map, else in the first shard."""
        return usable_search_defaults(self.root) or usable_search_defaults(self.shard_map_paths[0]) or {}

    @property
    def shard_map_paths(self) -> list[Path]:
        return self.shards.shard_map.paths(self.root)

    def mean_text_bytes(self) -> float:
        infos = [info for info in self.shards.infos if info]
        docs = sum(info["num_docs"] for info in infos)
        return sum(info["mean_text_bytes"] * info["num_docs"] for info in infos) / docs if docs else 0.0

    def stats(self) -> dict[str, Any]:
        """Counts of the shards that answer now (what a search reaches); a down shard's last known documents
        are ``num_docs_down``, unknown ("?") for one that never answered."""
        self.check_open()
        up = [self.shards.is_up(s) for s in range(len(self.shards.names))]
        infos = [info for info, ok in zip(self.shards.infos, up) if info and ok]
        last_known = [info for info, ok in zip(self.shards.infos, up) if not ok]
        return {
            "num_docs": sum(info["num_docs"] for info in infos),
            "num_segments": sum(info["num_segments"] for info in infos),
            "vocab_size": self.vocab_size,
            "dense_docs": sum(info["dense_docs"] for info in infos),
            "dense_dim": self.dense_dim or 0,
            "index_version": self.index_version,
            "model": self._meta.get("model"),
            "dense_model": self._meta.get("dense_model"),
            "query_encoder": type(self.query_encoder).__name__,
            "modes": ",".join(self.modes()),
            "shards": len(up),
            "shards_up": sum(up),
            "shards_down": ",".join(name for name, ok in zip(self.shards.names, up) if not ok),
            "num_docs_down": "?" if None in last_known else sum(info["num_docs"] for info in last_known),
        }

    def doc(self, doc_id: str) -> str:
        self.check_open()
        (text,) = ShardLegs(self.shards, None).text([as_id(doc_id)])
        if text is None:
            raise KeyError(f"no document {doc_id!r} in {self.root}")
        return text

    # ------------------------------------------------------------------ search
    def warm_up(self, mode: str | None = None, hybrid: HybridOptions | None = None,
                prf: PrfOptions | bool | None = None) -> list[str]:
        """``Searcher.warm_up`` once every shard server is up, waiting up to ``WARM_UP_WAIT_S`` for those still
        starting (they start as the models load); past that, the encoders here only, with no search: a server
        must not wait to listen on a shard that may never come (pending placement, a damaged folder), nor log
        shards missing that have not yet started. A shard server warms its own kernels before it answers."""
        if self.shards.wait_all_up(WARM_UP_WAIT_S):
            return super().warm_up(mode, hybrid, prf)
        modes = [mode] if mode is not None else self.modes()
        if {"sparse", "hybrid"} & set(modes):
            self.encode_queries([WARM_UP_QUERY])
        if self.has_dense and {"dense", "hybrid"} & set(modes):
            self.encode_dense([WARM_UP_QUERY])
        down = ",".join(name for shard, name in enumerate(self.shards.names) if not self.shards.is_up(shard))
        return [f"encoders only for {'/'.join(modes)} (shards down: {down})"]

    def legs(self, deadline: float | None = None) -> ShardLegs:
        return ShardLegs(self.shards, deadline)

    def on_health(self, report) -> None:
        self.shards.on_health(report)

    # ------------------------------------------------------------------ writes
    def store(self, ids: list[str], texts: list[str], sparse: SparseBatch, dense: np.ndarray | None,
              deadline: float | None = None, check: Callable[[str], None] | None = None) -> None:
        """Each document to its owner, waiting on the shards no longer than the caller's ``deadline`` (the
        searches' rule, ``ShardSet.call``). A missing owner fails the write, UNAVAILABLE; a late one
        DEADLINE_EXCEEDED, and the write may still land there. Either way the owners that answered keep
        theirs: a write is atomic per shard (its journal), not across shards. Retrying the same upsert is
        safe: an id always routes to the same shard, which replaces the document it holds. ``check`` runs
        before anything is sent; the shards then take writes in the order they were sent."""
        self.check_open()
        if check is not None:
            check("writing")
        args = {}
        for shard, (positions, shard_ids) in _by_owner(self.shards, ids).items():
            args[shard] = (shard_ids, [texts[i] for i in positions], sparse.select(positions),
                           None if dense is None else dense[positions])
        answers, _ = self.shards.call("upsert", args, deadline, strict=True, write=True)
        for shard, version in answers.items():
            self.shards.versions[shard] = version

    def delete(self, ids: Sequence[str], deadline: float | None = None,
               check: Callable[[str], None] | None = None) -> list[str]:
        """Like ``store``; a retried delete is safe too, and reports the ids its first try removed as not found."""
        self.check_open()
        if check is not None:
            check("deleting")
        ids = [str(i) for i in ids]
        groups = _by_owner(self.shards, ids)
        answers, _ = self.shards.call("delete", {shard: (shard_ids,) for shard, (_, shard_ids) in groups.items()},
                                      deadline, strict=True, write=True)
        unknown = set()
        for shard, (not_found, version) in answers.items():
            unknown.update(not_found)
            self.shards.versions[shard] = version
        return [i for i in dict.fromkeys(ids) if i in unknown]

    def _release(self) -> None:
        self.shards.close()


def open_in_process(collection: str | Path, **options: Any) -> Searcher:
    """A Searcher over the collection folder, its shards opened in this process (no Ray) when it is sharded."""
    from lsr.ingest.sharding import is_sharded

    if is_sharded(collection):
        return ShardedSearcher.open(collection, in_process=True, **options)
    return Searcher.open(collection, **options)
