"""``--eval`` and dev validation: sparse nDCG@10 and mean non-zeros on a BEIR split, scored exactly in memory.

No index is built, so nothing is cached under a model name whose weights are still changing;
brute-force float32 dot products are the yardstick the index itself is checked against.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from lsr.encode.splade import SpladeEncoder


def sparse_quality(encoder: SpladeEncoder, dataset: str, split: str = "test", *, data_dir: str | None = None,
                   k: int = 100, progress: bool = True, query_encoder: Any = None) -> dict[str, float]:
    """{"ndcg@10", ..., "doc_nnz", "query_nnz", "queries", "docs"} of ``encoder`` on ``dataset``'s ``split``.

    ``query_encoder``: the query side when it is not ``encoder`` (an inference-free model's IDF queries)."""
    return quality_scorer(encoder, dataset, split, data_dir=data_dir, k=k, progress=progress,
                          query_encoder=query_encoder)()[0]


def quality_scorer(encoder: SpladeEncoder, dataset: str, split: str, *, data_dir: str | None = None, k: int = 100,
                   progress: bool = False, query_encoder: Any = None
                   ) -> Callable[[], tuple[dict[str, float], list[float]]]:
    """``sparse_quality`` as a function of the encoder's current weights, the dataset read once (for validation and
    ``--eval``'s before and after); each call also gives every judged query's nDCG@10, for a paired test."""
    from lsr.eval.backends import encoder_run
    from lsr.eval.datasets import load_beir, locate_dataset
    from lsr.eval.metrics import averaged, per_query

    source = locate_dataset(dataset, data_dir)
    data = load_beir(source, splits=(split,))
    if split not in data.qrels:
        raise ValueError(f"{source} has no qrels/{split}.tsv to evaluate on")
    from lsr.eval.datasets import nothing_to_find
    from lsr.eval.tuning import judges_findable

    if not judges_findable(data, split):  # every score 0: validation kept step 0's weights, and exit 0
        raise ValueError(nothing_to_find(source, split))
    qrels = data.qrels[split]
    qids = [q for q in qrels if q in data.queries]

    calls = 0

    def score() -> tuple[dict[str, float], list[float]]:
        nonlocal calls
        with _truncation_unsaid(calls > 0):  # k + 1: the evaluator drops self-hits
            run, queries, docs = encoder_run(encoder, data, qids, k + 1, progress=progress, query_encoder=query_encoder)
        calls += 1
        table = per_query(qrels, run)
        return ({**averaged(table), "doc_nnz": docs.nnz / max(1, len(docs)),
                 "query_nnz": queries.nnz / max(1, len(queries)), "queries": len(qids), "docs": len(data.corpus)},
                [table[q]["ndcg@10"] for q in qrels])

    return score


@contextmanager
def _truncation_unsaid(quiet: bool) -> Iterator[None]:
    """The encoder's truncation warning, left out where ``quiet``: a scorer's later calls cut the same texts as its
    first, and dev validation every 50 steps printed the same line into the progress bar's each time."""
    if not quiet:
        yield
        return
    from lsr.encode.inputs import TRUNCATION_WARNING

    logger = logging.getLogger(SpladeEncoder.__module__)
    keep = lambda record: record.msg != TRUNCATION_WARNING  # noqa: E731
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
