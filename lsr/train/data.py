"""Training examples: (query, positive, hard-negative pool, optional teacher scores).

Two sources: a BEIR dataset's train split (one example per query, whose positive is drawn each epoch from its
highest-graded judged documents; hard negatives mined with BM25 or with the starting model's own exact retrieval,
never a judged document of that query), or a JSONL file of
``{"query": ..., "positive": ..., "negatives": [...], "scores": [pos, neg1, ...]}`` rows where
``negatives`` and ``scores`` (teacher scores for margin-MSE, same order) are optional; sentence-transformers'
columns (``anchor``, ``negative`` or ``negative_1``..``N``) are read as those.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lsr.encode.texts import invalid_json, is_blank, json_line, surrogate_at
from lsr.files import GZIP_ERRORS, open_maybe_gzip
from lsr.sparse import short_repr

if TYPE_CHECKING:
    from lsr.eval.datasets import BeirDataset
    from lsr.eval.metrics import Run

    Miner = Callable[[BeirDataset, Sequence[str], int], Run]  # (dataset, query ids, depth) -> ranked documents

log = logging.getLogger(__name__)

MINED_NEGATIVES = 20  # pool size per query; each epoch draws from it


# Teacher scores are matched as margins to the student's dot products (tens): a margin of millions would swamp the
# loss, and one past float32's range trained on inf.
MAX_TEACHER_SCORE = 10_000.0


@dataclass(frozen=True)
class Example:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    scores: tuple[float, ...] | None = None  # teacher scores of (positive, *negatives)
    alternatives: tuple[str, ...] = ()  # positives as good as ``positive``: each epoch draws one of (positive, *these)
    judged: tuple[str, ...] = ()  # every other document judged relevant to the query: never one of its negatives

    @property
    def positives(self) -> tuple[str, ...]:
        return (self.positive, *self.alternatives)


def is_jsonl(data: str) -> bool:
    """DATA names a JSONL training file (``.jsonl`` or gzip'd ``.jsonl.gz``, any case), not a BEIR dataset: a
    pairs.jsonl.gz or PAIRS.JSONL was taken for a BEIR name and refused as "not a BEIR folder"."""
    return Path(data).name.lower().endswith((".jsonl", ".jsonl.gz"))


def load_examples(data: str, split: str = "train", *, data_dir: str | None = None, miner: Miner | None = None) -> list[Example]:
    """A ``.jsonl(.gz)`` file, else a BEIR name, folder or archive (its ``split`` qrels, negatives from ``miner``)."""
    path = Path(data)
    if is_jsonl(data):
        if miner is not None:
            raise ValueError("--negatives model mines a BEIR corpus; a JSONL file brings its own negatives")
        if not path.is_file():
            raise FileNotFoundError(f"training file {data} {'is a folder' if path.is_dir() else 'does not exist'}")
        return read_jsonl(path)
    return beir_examples(data, split, data_dir=data_dir, miner=miner)


def model_miner(encoder: Any, *, progress: bool = False) -> Miner:
    """Mine with the model being fine-tuned (its weights before training): exact SPLADE retrieval over the corpus.

    Its own near misses are the negatives it most needs to push down; BM25's are lexical look-alikes it may
    already rank low. Scored by exact dot products, so no index (and no index cache) is involved.
    """
    from lsr.eval.backends import encoder_run

    def mine(dataset: BeirDataset, qids: Sequence[str], depth: int) -> Run:
        log.info("mining hard negatives with %s over %d documents", getattr(encoder, "name", "the model"), len(dataset.corpus))
        return encoder_run(encoder, dataset, qids, depth, progress=progress)[0]

    return mine


def read_jsonl(path: Path) -> list[Example]:
    """Training rows, one JSON object a line, in UTF-8 (a byte-order mark is allowed), gzip'd when the name ends in
    ``.gz``; a bad line is named, and so is a damaged gzip stream (a bare OSError or EOFError otherwise)."""
    examples = []
    try:
        with open_maybe_gzip(path) as fh:
            for line_no, raw in enumerate(fh, start=1):
                where = f"{path} line {line_no}"
                try:
                    line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                     f"{exc.start + 1})") from None
                if line.strip():
                    examples.append(_example(line, where))
    except GZIP_ERRORS as exc:
        raise ValueError(f"{path} is not a whole gzip file ({exc}); compress it again, or pass "
                         "the plain .jsonl") from None
    if not examples:
        raise ValueError(f"{path} holds no training rows; expected JSON lines with \"query\" and \"positive\"")
    return examples


def _example(line: str, where: str) -> Example:
    try:
        row = json_line(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: {invalid_json(exc)}") from None
    except RecursionError:  # named no line
        raise ValueError(f"{where}: JSON nested too deeply to read") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    row = _our_names(row, where)
    for key in ("query", "positive"):
        if key not in row:
            raise ValueError(f"{where}: no {key!r} key (the row has {', '.join(map(repr, row)) or 'none'}; keys: "
                             f"{_KEYS_SAID})")
        if not isinstance(row[key], str) or is_blank(row[key]):  # NUL or zero-width only: no word, as the encoder sees it
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
    negatives = row.get("negatives", [])
    if not isinstance(negatives, list) or not all(isinstance(n, str) and not is_blank(n) for n in negatives):
        raise ValueError(f"{where}: 'negatives' must be a list of non-empty strings")
    if row["positive"] in negatives:  # scored as the positive itself: no negative, and a teacher margin for one text
        raise ValueError(f"{where}: 'negatives' holds the positive itself; drop it from the list")
    if any(surrogate_at(text) is not None for text in (row["query"], row["positive"], *negatives)):
        # the tokenizer refused it when its batch came up, hours in
        raise ValueError(f"{where}: holds a lone surrogate (an escaped \\ud800-\\udfff), which is not UTF-8 text")
    scores = row.get("scores")
    if scores is not None:
        if (not isinstance(scores, list) or len(scores) != 1 + len(negatives)
                or not all(isinstance(s, int) and not isinstance(s, bool) or isinstance(s, float) and math.isfinite(s)
                           for s in scores)):  # an int of 400 digits failed math.isfinite: OverflowError
            raise ValueError(f"{where}: 'scores' must be {1 + len(negatives)} finite numbers (the positive's, then "
                             "each negative's)")
        worst = max(scores, key=abs)
        if abs(worst) > MAX_TEACHER_SCORE:  # 1e308 became inf in float32 and failed as "lower --lr"
            shown = f"{worst:g}" if isinstance(worst, float) or abs(worst) < 10**300 else \
                f"a number of {len(str(abs(worst)))} digits"
            raise ValueError(f"{where}: teacher 'scores' must lie within ±{MAX_TEACHER_SCORE:,.0f}, got {shown}; "
                             "divide them by a constant (margin-MSE matches their differences to the model's dot "
                             "products, which stay in the tens)")
        scores = tuple(float(s) for s in scores)
    return Example(row["query"], row["positive"], tuple(negatives), scores)


KEYS = ("query", "positive", "negatives", "scores")
_KEYS_SAID = "query or anchor, positive, negatives or negative / negative_1..N, scores"
# Keys holding these are hard negatives or teacher scores under another name ("neg", "hard_negs", "teacher_scores"),
# however far from ours: dropped, the run trained without them.
_STEMS = (("neg", "negatives"), ("score", "scores"))


def _our_names(row: dict[str, Any], where: str) -> dict[str, Any]:
    """The row with sentence-transformers' column names read as ours (``anchor`` for the query, ``negative`` or
    ``negative_1``, ``negative_2``, ... for the negatives), and a key that looks like a misspelt one of ours refused:
    a "negative" or "score" key was dropped without a word, and the run trained without hard negatives."""
    row = dict(row)
    if "anchor" in row and "query" in row:  # one was dropped without a word
        raise ValueError(f"{where}: both 'query' and 'anchor', which name the same thing; keep one")
    if "anchor" in row:
        row["query"] = row.pop("anchor")
    numbered = sorted((k for k in row if k.startswith("negative_") and k[9:].isdigit()), key=lambda k: int(k[9:]))
    singles = (["negative"] if "negative" in row else []) + numbered
    if singles and "negatives" not in row:
        row["negatives"] = [row.pop(k) for k in singles]
    if "label" in row:  # sentence-transformers' margin-MSE column (a margin, or a score per text): trained without it
        raise ValueError(f"{where}: a 'label' column is not read; give the teacher's 'scores' (the positive's, then "
                         "each negative's) for margin-MSE distillation, or drop it")
    for key in row:
        close = [] if key in KEYS else (difflib.get_close_matches(key.lower(), KEYS, n=1, cutoff=0.75)
                                        or [ours for stem, ours in _STEMS if stem in key.lower()][:1])
        if close:
            raise ValueError(f"{where}: unknown key {key!r}; did you mean {close[0]!r}? (keys: {_KEYS_SAID})")
    return row


def beir_examples(data: str, split: str, *, data_dir: str | None = None, miner: Miner | None = None) -> list[Example]:
    """One example per query of ``split`` with a judged-relevant document, with negatives mined by ``miner``
    (default BM25): its top-ranked documents that are not judged for the query.

    Per query, not per (query, document) pair: NFCorpus' train split judges 110,575 pairs over 2,590 queries, 56 % of
    them from a tenth of the queries (one has 1,363), so per-pair batches were mostly a few broad queries and their
    other judged documents. The positive is drawn each epoch from the highest grade; lower grades are only masked.
    """
    from lsr.eval.backends import bm25_run
    from lsr.eval.datasets import load_beir, locate_dataset

    source = locate_dataset(data, data_dir)
    dataset = load_beir(source, splits=(split,))
    if split not in dataset.qrels:
        raise ValueError(f"{source} has no qrels/{split}.tsv, so no {split} split to train on; "
                         "pass --split, or a JSONL file of query/positive rows")
    qrels = {q: docs for q, docs in dataset.qrels[split].items() if q in dataset.queries}
    def has_text(doc: str) -> bool:  # a blank document is no positive
        return doc in dataset.corpus and not is_blank(dataset.doc_texts([doc])[0])

    positives = {q: {d: grade for d, grade in docs.items() if grade > 0 and has_text(d)} for q, docs in qrels.items()}
    qids = [q for q, docs in positives.items() if docs]
    if not qids:
        raise ValueError(f"{source}'s {split} split judges no query relevant to any document with text in its corpus")
    if len(qids) < len(qrels):  # a corpus and qrels that do not match trained on what was left, unsaid
        dropped = next(q for q in qrels if q not in qids)
        log.warning("%d of the %d queries %s's %s split judges have no relevant document with text in its corpus "
                    "(such as %s); they are left out of training", len(qrels) - len(qids), len(qrels), source, split,
                    short_repr(dropped))
    depth = MINED_NEGATIVES + max(len(qrels[q]) for q in qids)
    mined = (miner or bm25_run)(dataset, qids, depth)
    examples = []
    for q in qids:
        ranked = sorted(mined.get(q, {}).items(), key=lambda hit: -hit[1])
        negatives = tuple(dataset.doc_texts([d for d, _ in ranked if d not in qrels[q]][:MINED_NEGATIVES]))
        top = max(positives[q].values())
        best = dataset.doc_texts([d for d, grade in positives[q].items() if grade == top])
        rest = dataset.doc_texts([d for d, grade in positives[q].items() if grade < top])
        examples.append(Example(dataset.queries[q], best[0], negatives, alternatives=tuple(best[1:]), judged=tuple(rest)))
    return examples
