"""Ways to turn a list of queries into a run: bm25s, the in-process Searcher, a gRPC endpoint, brute force."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.eval.datasets import BeirDataset
from lsr.eval.metrics import Run


def bm25_run(dataset: BeirDataset, qids: Sequence[str], k: int) -> Run:
    """The baseline: ``lsr.search.bm25_index`` (the settings of a collection's BM25 leg) over the dataset's corpus."""
    from lsr.search.bm25_index import Bm25Index

    doc_ids = list(dataset.corpus)
    index = Bm25Index.build(doc_ids, dataset.doc_texts(doc_ids))
    return dict(zip(qids, index.search([dataset.queries[q] for q in qids], k)))


class InProcess:
    """Runs queries through a local Searcher; each query list is encoded once, and each query's first-pass leg runs
    are searched once (``FirstPassMemo``), then reused across settings while the collection stays the same."""

    def __init__(self, searcher: Any) -> None:
        self.searcher = searcher
        self._encoded: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # per query: each leg's input
        self._memos: dict[tuple[str, ...], list[dict]] = {}
        self._version = searcher.index_version

    def run(self, qids: Sequence[str], texts: Sequence[str], k: int, mode: str, hybrid=None, prf=None) -> Run:
        from lsr.search.legs import FirstPassMemo
        from lsr.search.searcher import row_dict

        key = tuple(qids)
        if key not in self._encoded:
            sparse, _ = self.searcher.encode_queries(list(texts))
            dense = self.searcher.encode_dense(list(texts))[0] if self.searcher.has_dense else None
            self._encoded[key] = [{"sparse": row_dict(sparse, i), "dense": None if dense is None else dense[i],
                                   "bm25": texts[i]} for i in range(len(qids))]
        legs = self.searcher.legs()  # one view for the whole run: a document deleted under it (another process's
        # write, taken up mid-run) was still in a memo's first pass, and PRF asked the new view for its vector
        view = getattr(legs, "view", None)  # the memos are that view's (a sharded searcher's legs have none here)
        version = self.searcher.index_version if view is None else self.searcher.version_of(view)
        if version != self._version:
            self._memos.clear()
            self._version = version
        memos = self._memos.setdefault(key, [{} for _ in qids])
        run: Run = {}
        for q, inputs, memo in zip(qids, self._encoded[key], memos):
            result = self.searcher.search_encoded(inputs["sparse"], inputs["dense"], text=inputs["bm25"], k=k, mode=mode,
                                                  hybrid=hybrid, prf=prf, source=FirstPassMemo(legs, inputs, memo))
            run[q] = {h.doc_id: h.score for h in result.hits}
        return run


class Remote:
    """Runs queries through the gRPC service (``lsr serve``) with the same options."""

    def __init__(self, endpoint: str, **connection: Any) -> None:
        """``connection``: ``Client``'s token, tls and timeout, for a secured server."""
        from lsr.service.client import CONNECT_TIMEOUT, Client

        self.client = Client(endpoint, **connection)
        try:
            self.client.wait_ready(timeout=CONNECT_TIMEOUT)
        except BaseException:
            self.client.close()  # a server that is down leaves no channel open behind the error
            raise

    def run(self, qids: Sequence[str], texts: Sequence[str], k: int, mode: str, hybrid=None, prf=None) -> Run:
        import grpc

        from lsr.files import MachineStateError
        from lsr.service.client import call_failed

        try:
            results = self.client.search_batch(list(texts), k=k, mode=mode, hybrid=hybrid, prf=prf)
        except grpc.RpcError as exc:  # a server stopped mid-run: one line, not a gRPC traceback
            raise call_failed(exc) from None
        missing = sorted({shard for r in results for shard in r.shards_missing})
        if missing:  # a score over part of the collection would be reported as the collection's
            raise MachineStateError(f"shard(s) {', '.join(missing)} of the server did not answer, so its results miss "
                                    "their documents; evaluate once every shard is up (its health is SERVING)")
        return {q: {h.doc_id: h.score for h in r.hits} for q, r in zip(qids, results)}


def exact_sparse_run(collection_path: Path, searcher: Any, qids: Sequence[str], texts: Sequence[str], k: int) -> Run:
    """Brute-force float32 dot products over the stored (unquantized) vectors: the index's yardstick."""
    from lsr.ingest.layout import read_vector_shards
    from lsr.sparse import SparseBatch

    meta = json.loads((collection_path / "lsr.json").read_text())
    batches, ids = zip(*read_vector_shards(collection_path, meta["shards"]))
    docs_t = SparseBatch.concat(list(batches)).to_scipy().T.tocsr()
    doc_ids = [d for part in ids for d in part]
    queries = searcher.encode_queries(list(texts))[0].to_scipy()
    return dot_product_run(queries, docs_t, qids, doc_ids, k)


def dot_product_run(queries: Any, docs_t: Any, qids: Sequence[str], doc_ids: Sequence[str], k: int) -> Run:
    """The top ``k`` positive-scoring documents per query: scipy CSR queries [Q, V] times documents [V, D]."""
    run: Run = {}
    for start in range(0, len(qids), 64):  # bounded memory: 64 dense score rows at a time
        scores = (queries[start : start + 64] @ docs_t).toarray()
        for row, q in enumerate(qids[start : start + 64]):
            top = np.argsort(-scores[row], kind="stable")[:k]
            run[q] = {doc_ids[j]: float(scores[row, j]) for j in top if scores[row, j] > 0}
    return run


def encoder_run(encoder: Any, dataset: BeirDataset, qids: Sequence[str], k: int, *, progress: bool = False,
                query_encoder: Any = None) -> tuple[Run, Any, Any]:
    """Exact retrieval with a SPLADE ``encoder`` over the whole corpus, no index: (run, query vectors, doc vectors).

    ``query_encoder`` encodes the queries when they have a side of their own (inference-free: IDF weights)."""
    doc_ids = list(dataset.corpus)
    docs = encoder.encode_documents(dataset.doc_texts(doc_ids), show_progress=progress)
    queries = (query_encoder or encoder).encode_queries([dataset.queries[q] for q in qids])
    return dot_product_run(queries.to_scipy(), docs.to_scipy().T.tocsr(), qids, doc_ids, k), queries, docs
