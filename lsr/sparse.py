"""SparseBatch: the one in-memory form of sparse vectors that encoders produce and the index consumes.

A CSR triple (indptr int64, indices int32, values float32) plus the vocabulary that names the
term ids. Encoders know nothing of storage and the index knows nothing of models; this class is
the contract between them, and its Arrow/Parquet form is the on-disk hand-over.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsr.files import check_parquet_seal, write_output, write_sealed_parquet

_VOCAB_KEY = b"lsr.vocab"
VOCAB_SIZE_KEY = b"lsr.vocab_size"
QUERY_SCALE = (1e-30, 1e30)  # a query vector's largest value: float32 scores stay finite and non-zero
# A document's largest weight. SPLADE's are a few units (sum pooling: thousands); 3.4e38 scored hits inf, and with
# QUERY_SCALE's top a query needs hundreds of such terms before a float32 score overflows.
MAX_DOC_WEIGHT = 1e6


# A document id is one word of at most this many UTF-8 bytes: a TREC run line splits at whitespace, a control
# character (NUL, a newline) breaks logs and the files that hold ids, and an id of megabytes once echoed in an error
# passed gRPC's 16 KB trailer limit (the caller got RESOURCE_EXHAUSTED, not NOT_FOUND). Nor may it hold what shows as
# nothing or reorders what follows (a zero-width space, a soft hyphen, a Hangul filler, a byte-order mark, a
# right-to-left override: the id printed in a run, a log or a terminal is not the id stored), or a Unicode
# noncharacter; the joiners and variation selectors scripts and emoji use may, and tag characters only in an emoji's
# tag sequence (a subdivision flag: a black flag, then tags).
MAX_ID_BYTES = 512
_NOT_IN_IDS = re.compile("[\\s\x00-\x1f\x7f-\x9f\xad\ud800-\udfff\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b"
                         "\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\ufdd0-\ufdef"
                         "\U0001d173-\U0001d17a" + "".join(f"{chr(plane + 0xfffe)}{chr(plane + 0xffff)}" for plane in
                                                            range(0, 0x110000, 0x10000)) +
                         "]|(?<![\U0001f3f4\U000e0020-\U000e007f])[\U000e0000-\U000e007f]")


def id_problem(doc_id: str) -> str | None:
    """Why ``doc_id`` cannot name a stored document, or None."""
    if not doc_id:
        return "is empty"
    size = len(doc_id.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"is {size:,} bytes long; an id may hold at most {MAX_ID_BYTES}"
    bad = _NOT_IN_IDS.search(doc_id)
    if bad is not None:
        return (f"holds {ascii(bad.group())} at character {bad.start()}; an id is one visible word, without whitespace, "
                "control, invisible or direction characters (a TREC run, a log or a terminal must show the id stored)")
    return None


def check_ids(ids: Sequence[str], what: str = "document") -> None:
    """Raise ValueError naming the first of ``ids`` that ``id_problem`` refuses (one regex pass over them all when
    none is: 8.8M MS MARCO ids are checked in about a second). Checked where documents come in (a corpus, an
    upsert), not by the index: a journal or a repair replays ids stored before the check existed."""
    if ids and (_NOT_IN_IDS.search("/".join(ids)) or min(map(len, ids)) == 0 or 4 * max(map(len, ids)) > MAX_ID_BYTES):
        for n, doc_id in enumerate(ids):
            problem = id_problem(doc_id)
            if problem is not None:
                raise ValueError(f"{what} {n}'s id {short_repr(doc_id)} {problem}")


def short_repr(value: str, limit: int = 80) -> str:
    """``repr(value)``, its middle cut when longer than ``limit`` characters: for messages that name a value."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-limit // 2:]} ({len(value):,} characters)"


def id_list(ids: Any, name: str = "ids") -> list[str]:
    """Ids as strings; one str is refused, since iterating it gives its characters (``delete("12")`` deleted "1" and
    "2" and kept "12")."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a list of ids, not one {type(ids).__name__}: pass [{ids!r}]")
    if not isinstance(ids, Iterable):  # "'NoneType' object is not iterable" named no argument
        raise TypeError(f"{name} must be a list of ids, got {type(ids).__name__}")
    out = []
    for i in ids:
        out.append(i if isinstance(i, str) else as_id(i, f"{name}[{len(out)}]"))
    return out


def repeated_ids(ids: Sequence[str], shown: int = 10) -> list[str]:
    """The first ``shown`` ids that appear more than once, in order of first appearance: every place that takes a
    batch of ids names them the same way (one id keys one vector, in a vectors file as in a collection)."""
    seen, repeated = set(), {}
    for i in ids:
        if i in seen and len(repeated) < shown:
            repeated[i] = None
        seen.add(i)
    return list(repeated)


def is_whole(value: Any) -> bool:
    """A whole number, Python's or numpy's, and no bool (True searched term 1, 1.5 was cast to 1): the one test every
    count, id and term id passes, in the index and the Searcher alike."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number, Python's or numpy's, and no bool or str ("1" was read as 1.0, None as NaN)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_bound_factor(value: Any, name: str = "bound_factor") -> None:
    """An approximate search's factor (``InvertedIndex.search``): a finite number, at least 1 (exact). Checked alike
    by the index, the Searcher, the client and the CLI (None or "2" had failed inside numpy's isfinite)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number >= 1 (1 is exact), got {value!r}")
    if not np.isfinite(value) or value < 1.0:
        raise ValueError(f"{name} must be a number >= 1 (1 is exact), got {value!r}")


def as_id(doc_id: Any, what: str = "doc_id") -> str:
    """One id as a str: a whole number becomes its digits; anything else is a TypeError (str(None) stored a document
    named "None", and looked one up)."""
    if isinstance(doc_id, str):
        return doc_id
    if not is_whole(doc_id):
        raise TypeError(f"{what} is {doc_id!r}; an id is a str (or a whole number)")
    return str(doc_id)


def _term_id(key: Any) -> int:
    if not is_whole(key):
        raise TypeError(f"a key is a token or a whole term id, got {key!r}")  # int(2.7) was term 2
    return int(key)


def _row_weights(row: Mapping, n: int) -> np.ndarray:
    """A from_dicts row's weights as float64; a weight that is no real number is a TypeError naming its row (None
    became NaN and "1" the weight 1)."""
    weights = np.asarray(list(row.values()))
    if weights.size and weights.dtype.kind not in "iuf":
        bad = next((w for w in row.values() if not is_real(w)), weights.dtype)  # complex numbers pass is_real
        raise TypeError(f"row {n}'s weights must be numbers, got {bad!r}")
    return weights.astype(np.float64)


def _bad_weight(weights: np.ndarray, indptr: np.ndarray) -> tuple[int, np.floating] | None:
    """(row, weight) of the first weight a vectors file may not hold: not finite, negative or over MAX_DOC_WEIGHT
    (the index refuses such a document); None when every weight is fine."""
    bad = ~(np.isfinite(weights) & (weights >= 0) & (weights <= MAX_DOC_WEIGHT))
    if not bad.any():
        return None
    at = int(np.flatnonzero(bad)[0])
    return int(np.searchsorted(indptr, at, side="right")) - 1, weights[at]  # float32: -0.1 reads "-0.1"


def _repeated_term(indptr: np.ndarray, indices: np.ndarray) -> tuple[int, int] | None:
    """(row, term) of a term found twice in one row, else None. Rows whose ids ascend (the encoders',
    ``from_dense``'s, ``from_scipy``'s) cost one comparison of neighbours; only a batch with another order is sorted."""
    if len(indices) < 2:
        return None
    descending = indices[1:] <= indices[:-1]
    starts = indptr[1:-1]
    descending[starts[(starts > 0) & (starts < len(indices))] - 1] = False  # the pairs across two rows
    if not descending.any():
        return None
    keys = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64) * (1 << 32), np.diff(indptr)) + indices
    keys.sort()
    twice = np.flatnonzero(keys[1:] == keys[:-1])
    return None if not len(twice) else (int(keys[twice[0]] >> 32), int(keys[twice[0]] & 0xFFFFFFFF))


def _list_column(table: pa.Table, name: str) -> pa.Array:
    """Column ``name`` of a vectors table as one list array of numbers; another type is a ValueError naming it (an
    int64 column failed as "'Int64Array' object has no attribute 'offsets'", a list of strings inside numpy)."""
    column = table.column(name).combine_chunks()
    kind = column.type
    if not ((pa.types.is_list(kind) or pa.types.is_large_list(kind))
            and (pa.types.is_integer(kind.value_type) if name == "indices" else
                 pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type))):
        wanted = "list<int32>" if name == "indices" else "list<float32>"
        raise ValueError(f"column {name!r} is {kind}; a vectors file's {name} are {wanted}")
    return column


@dataclass(eq=False)
class SparseBatch:
    """Rows of sparse vectors in CSR form; row i is ``indices/values[indptr[i]:indptr[i+1]]``, term ids in
    0..vocab_size-1. Two batches are equal when their rows are and, where both carry a vocabulary, their
    vocabularies are: a file written without its vocabulary reads back equal to the batch it came from."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    vocab_size: int
    vocab: Sequence[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Checked first: 10.0 was kept and written as "10.0", which no read could parse back; None or "10" failed
        # inside numpy's comparisons.
        if isinstance(self.vocab_size, (bool, np.bool_)) or not isinstance(self.vocab_size, (int, np.integer)):
            raise TypeError(f"vocab_size must be a whole number, got {self.vocab_size!r}")
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be ≥ 1, got {self.vocab_size}")
        if self.vocab_size > 2**31:  # term 2**31 + 4 wrapped to a negative id
            raise ValueError(f"vocab_size must be at most 2**31 (term ids are int32), got {self.vocab_size}")
        self.vocab_size = int(self.vocab_size)
        indptr, indices, values = np.asarray(self.indptr), np.asarray(self.indices), np.asarray(self.values)
        for name, array in (("indptr", indptr), ("indices", indices), ("values", values)):
            if array.ndim != 1:  # a column of indices [[1], [3]] was read as the terms of every row
                raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
        # a term id 1.5 was cast to 1 and NaN to -2**31; an indptr of 0.7 to 0, moving a term into the row before
        for name, array, what in (("indptr", indptr, "whole numbers"), ("indices", indices, "whole term ids")):
            if array.size and not np.issubdtype(array.dtype, np.integer):
                raise TypeError(f"{name} must be {what}, got an array of {array.dtype}")
        if values.size and (values.dtype.kind not in "iuf"):  # "1.5" was cast, True read as 1.0
            raise TypeError(f"values must be numbers, got an array of {values.dtype}")
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        low, high = (indices.min(), indices.max()) if indices.size else (0, 0)
        if low < 0 or high >= self.vocab_size:  # checked before the int32 cast: 2**32 + 5 would wrap to term 5
            raise ValueError(f"term id {low if low < 0 else high} outside the vocabulary [0, {self.vocab_size})")
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        if len(self.indptr) == 0 or self.indptr[0] != 0:
            raise ValueError("indptr must be a 1-D array starting at 0")
        if self.indptr[-1] != len(self.indices) or len(self.indices) != len(self.values):
            raise ValueError(
                f"CSR arrays disagree: indptr ends at {self.indptr[-1]}, "
                f"{len(self.indices)} indices, {len(self.values)} values"
            )
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError("indptr must be non-decreasing")
        repeated = _repeated_term(self.indptr, self.indices)
        if repeated is not None:  # to_dicts kept one weight, to_dense the last, to_scipy and the index their sum
            raise ValueError(f"row {repeated[0]} holds term {repeated[1]} twice; a row holds each term once "
                             "(SparseBatch.from_dicts adds a repeated term's weights together)")
        if self.vocab is not None and len(self.vocab) != self.vocab_size:
            raise ValueError(f"vocab has {len(self.vocab)} entries but vocab_size is {self.vocab_size}")

    # ----------------------------------------------------------------- construction
    @classmethod
    def empty(cls, n_rows: int, vocab_size: int, vocab: Sequence[str] | None = None) -> "SparseBatch":
        return cls(np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), vocab_size, vocab)

    @classmethod
    def from_dense(cls, dense: np.ndarray, vocab: Sequence[str] | None = None) -> "SparseBatch":
        """Keep the non-zero entries of a [rows, vocab] array, term ids ascending within a row."""
        dense = np.asarray(dense)
        if dense.ndim != 2:  # a 1-D vector failed as "not enough values to unpack"
            raise ValueError(f"from_dense takes a [rows, vocab] array, got shape {dense.shape}; one vector is "
                             "vector[None, :]")
        rows, cols = np.nonzero(dense)
        indptr = np.zeros(dense.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
        return cls(indptr, cols, dense[rows, cols], dense.shape[1], vocab)

    @classmethod
    def from_scipy(cls, matrix: Any, vocab: Sequence[str] | None = None) -> "SparseBatch":
        """Any scipy sparse matrix (or array), as scipy reads it: duplicate entries summed, explicit zeros dropped;
        the caller's matrix is left as it was (its indices were sorted in place)."""
        import scipy.sparse as sp

        if not sp.issparse(matrix):  # a torch sparse tensor: "'Tensor' object has no attribute 'tocsr'"
            raise TypeError(f"from_scipy takes a scipy sparse matrix, got {type(matrix).__name__}")
        csr = sp.csr_matrix(matrix, copy=True)
        csr.sum_duplicates()  # sorts the indices too
        csr.eliminate_zeros()
        return cls(csr.indptr, csr.indices, csr.data, csr.shape[1], vocab)

    @classmethod
    def from_dicts(cls, rows: Iterable[dict], vocab: Sequence[str], vocab_size: int | None = None) -> "SparseBatch":
        """Build from ``{token or term id: weight}`` dicts; unknown tokens raise KeyError naming them. A term named
        twice in a row (as a token and as its id) has the sum of its weights, as the index scores such a query."""
        if not isinstance(rows, Iterable):  # "'NoneType' object is not iterable" named nothing
            raise TypeError(f"rows must be {{token or term id: weight}} dicts, got {type(rows).__name__}")
        lookup = {tok: i for i, tok in enumerate(vocab)}
        indptr, indices, values = [0], [], []
        for n, row in enumerate(rows):
            if not isinstance(row, Mapping):  # one dict was iterated as its keys: "'str' object has no attribute"
                raise TypeError(f"rows must be {{token or term id: weight}} dicts; row {n} is a {type(row).__name__}")
            ids = np.asarray([lookup[t] if isinstance(t, str) else _term_id(t) for t in row], np.int64)
            terms, where = np.unique(ids, return_inverse=True)
            weights = np.zeros(len(terms), np.float64)
            np.add.at(weights, where, _row_weights(row, n))
            indices.extend(terms.tolist())
            values.extend(weights.tolist())
            indptr.append(len(indices))
        return cls(np.asarray(indptr), np.asarray(indices, np.int64), np.asarray(values, np.float32),
                   len(vocab) if vocab_size is None else vocab_size, vocab)  # 0 was taken as "not given"

    @classmethod
    def concat(cls, batches: Sequence["SparseBatch"]) -> "SparseBatch":
        if not batches:
            raise ValueError("concat needs at least one batch")
        sizes = {b.vocab_size for b in batches}
        if len(sizes) > 1:
            raise ValueError(f"concat of batches over different vocabularies (vocab sizes {sorted(sizes)})")
        named = [b.vocab for b in batches if b.vocab is not None]
        if any(v is not named[0] and list(v) != list(named[0]) for v in named[1:]):  # the first's names were kept
            raise ValueError("concat of batches over different vocabularies (same size, other tokens)")
        offsets = np.cumsum([0] + [b.nnz for b in batches[:-1]])
        indptr = np.concatenate([[0]] + [b.indptr[1:] + off for b, off in zip(batches, offsets)])
        return cls(
            indptr,
            np.concatenate([b.indices for b in batches]),
            np.concatenate([b.values for b in batches]),
            batches[0].vocab_size,
            batches[0].vocab,
        )

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __repr__(self) -> str:  # not the CSR arrays: 936 characters for two documents
        return f"SparseBatch(rows={len(self)}, vocab_size={self.vocab_size}, nnz={self.nnz})"

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseBatch):
            return NotImplemented
        return (self.vocab_size == other.vocab_size and np.array_equal(self.indptr, other.indptr)
                and np.array_equal(self.indices, other.indices) and np.array_equal(self.values, other.values)
                and (self.vocab is other.vocab or self.vocab is None or other.vocab is None
                     or list(self.vocab) == list(other.vocab)))

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(term ids, weights) of row i (-1: the last), as views."""
        i = self._row_positions([i])[0]
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.indices[lo:hi], self.values[lo:hi]

    def _row_positions(self, rows: Any) -> np.ndarray:
        """Row numbers (negative ones from the end) or a boolean mask of every row, as row numbers; IndexError past
        the end (b[[-1]] read indptr[-1:0]), TypeError for anything else (a bool alone was row 0 or 1)."""
        if isinstance(rows, (bool, np.bool_)):
            raise TypeError("a bool is not a row number; select rows with a mask of one bool per row")
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"a mask of {rows.size} bools for a batch of {len(self)} rows")
            return np.flatnonzero(rows)
        if rows.size == 0:
            return np.zeros(0, np.int64)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"rows are whole numbers or a boolean mask, got {rows.dtype} of shape {rows.shape}")
        if rows.min() < -len(self) or rows.max() >= len(self):
            bad = rows.min() if rows.min() < -len(self) else rows.max()
            raise IndexError(f"row {bad} of a batch of {len(self)}")
        return rows.astype(np.int64) % max(len(self), 1)

    def row_maxima(self) -> np.ndarray:
        """Each row's largest weight (0 for an empty row), float64."""
        out = np.zeros(len(self), np.float64)
        filled = np.diff(self.indptr) > 0
        if filled.any():  # an empty row between two filled ones adds nothing to the first one's span
            out[filled] = np.maximum.reduceat(self.values, self.indptr[:-1][filled])
        return out

    def select(self, rows: Sequence[int] | np.ndarray) -> "SparseBatch":
        """A new batch of the given rows (negative: from the end; or a boolean mask), in the given order."""
        rows = self._row_positions(rows)
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        indptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        take = np.concatenate([np.arange(self.indptr[r], self.indptr[r + 1]) for r in rows]) if len(rows) else []
        take = np.asarray(take, dtype=np.int64)
        return SparseBatch(indptr, self.indices[take], self.values[take], self.vocab_size, self.vocab)

    def __getitem__(self, item) -> "SparseBatch":
        if isinstance(item, slice):
            return self.select(np.arange(len(self))[item])
        if isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            return self.select([item])  # b[5] of 3 rows is an IndexError, not row 2
        return self.select(item)

    def to_scipy(self) -> Any:
        import scipy.sparse as sp

        return sp.csr_matrix((self.values, self.indices, self.indptr), shape=(len(self), self.vocab_size))

    def to_dense(self) -> np.ndarray:
        out = np.zeros((len(self), self.vocab_size), np.float32)
        rows = np.repeat(np.arange(len(self)), np.diff(self.indptr))
        out[rows, self.indices] = self.values
        return out

    def token(self, term_id: int) -> str:
        """The token of ``term_id``, or its digits where the batch carries no vocabulary; an id outside the vocabulary
        is an IndexError naming it (-1 named the last token, and 99 past a vocabulary of 4 read "99")."""
        if not is_whole(term_id) or not 0 <= term_id < self.vocab_size:
            raise IndexError(f"term id {term_id!r} is outside the vocabulary [0, {self.vocab_size})")
        return self.vocab[term_id] if self.vocab is not None else str(term_id)

    def to_dicts(self, top: int | None = None) -> list[dict[str | int, float]]:
        """Per row, ``{token: weight}`` ordered by weight descending (ties: lower term id first); ``{term id: weight}``
        where the batch carries no vocabulary, so a row feeds back into a search or ``from_dicts`` (its digits as a
        string were read as a token's name: unknown, or another term where a token is a number, as "1996" is)."""
        if top is not None and (not is_whole(top) or top < 1):
            raise ValueError(f"top must be a positive whole number or None, got {top!r}")  # -1 dropped the last term
        out = []
        for i in range(len(self)):
            ids, vals = self.row(i)
            order = np.lexsort((ids, -vals))
            if top is not None:
                order = order[:top]
            out.append({(int(ids[j]) if self.vocab is None else self.vocab[ids[j]]): float(vals[j]) for j in order})
        return out

    # ----------------------------------------------------------------- Arrow / Parquet
    def to_arrow(self, ids: Sequence[str] | None = None, *, with_vocab: bool = False) -> pa.Table:
        """One row per vector: ``indices: list<int32>``, ``values: list<float32>`` (and ``id`` if given).

        The vocabulary size travels in the schema metadata; the vocabulary itself (about 0.7 MB for
        BERT's 30k tokens, however few the rows) only with ``with_vocab``, for a self-describing file.
        A collection stores it once in ``vocab.json`` instead.

        A weight ``from_arrow`` refuses (not finite, negative, over ``MAX_DOC_WEIGHT``) is a ValueError naming its
        row here, where it was made: ``write_parquet`` wrote a NaN that only a later ``read_parquet`` failed on.
        """
        bad = _bad_weight(self.values, self.indptr)
        if bad is not None:
            raise ValueError(f"row {bad[0]} has the weight {bad[1]}; a weight is finite, ≥ 0 and at most "
                             f"{MAX_DOC_WEIGHT:g}")
        offsets = pa.array(self.indptr.astype(np.int32) if self.nnz < 2**31 else self.indptr)
        list_type = pa.ListArray if offsets.type == pa.int32() else pa.LargeListArray
        columns = {
            "indices": list_type.from_arrays(offsets, pa.array(self.indices, pa.int32())),
            "values": list_type.from_arrays(offsets, pa.array(self.values, pa.float32())),
        }
        if ids is not None:
            ids = id_list(ids)
            if len(ids) != len(self):
                raise ValueError(f"{len(ids)} ids for {len(self)} vectors")
            if repeated := repeated_ids(ids):  # a collection refused the file only when it was indexed
                raise ValueError(f"ids repeat: {repeated}; each vector needs its own id")
            columns = {"id": pa.array(ids, pa.string()), **columns}
        meta = {VOCAB_SIZE_KEY: str(self.vocab_size).encode()}
        if with_vocab and self.vocab is not None:
            meta[_VOCAB_KEY] = json.dumps(list(self.vocab)).encode()
        return pa.table(columns).replace_schema_metadata(meta)

    @classmethod
    def from_arrow(cls, table: pa.Table, vocab: Sequence[str] | None = None, *, first_row: int = 0) -> "SparseBatch":
        """The inverse of ``to_arrow``; a row whose term ids and weights differ in number, or whose weight is not
        finite, negative or over ``MAX_DOC_WEIGHT``, is a ValueError naming it (``first_row`` + its 1-based row)."""
        meta = table.schema.metadata or {}
        if vocab is None and _VOCAB_KEY in meta:
            vocab = json.loads(meta[_VOCAB_KEY])
        if VOCAB_SIZE_KEY in meta:
            vocab_size = int(meta[VOCAB_SIZE_KEY])
        elif vocab is not None:
            vocab_size = len(vocab)
        else:
            raise ValueError("its metadata has no lsr.vocab_size (a vectors file `lsr encode --output` writes has it), "
                             "and no vocabulary was passed")
        ind, val = _list_column(table, "indices"), _list_column(table, "values")
        indptr = np.asarray(ind.offsets, dtype=np.int64)
        indptr = indptr - indptr[0]
        weights_ptr = np.asarray(val.offsets, dtype=np.int64)
        weights_ptr = weights_ptr - weights_ptr[0]
        if not np.array_equal(indptr, weights_ptr):  # the weights were read by the ids' offsets: shifted between rows
            row = int(np.flatnonzero(np.diff(indptr) != np.diff(weights_ptr))[0])
            raise ValueError(f"row {first_row + row + 1} has {indptr[row + 1] - indptr[row]} term ids but "
                             f"{weights_ptr[row + 1] - weights_ptr[row]} weights")
        if ind.flatten().null_count:  # numpy read a null term id as NaN, which the int32 cast made -2**31
            row = int(np.searchsorted(indptr, int(np.flatnonzero(ind.flatten().is_null())[0]), side="right")) - 1
            raise ValueError(f"row {first_row + row + 1} has a null term id")
        terms = np.asarray(ind.flatten())  # checked here, before the constructor's int32 cast, to name the row
        outside = np.flatnonzero((terms < 0) | (terms >= vocab_size))
        if outside.size:  # the constructor's check names no row
            row = int(np.searchsorted(indptr, int(outside[0]), side="right")) - 1
            raise ValueError(f"row {first_row + row + 1} has the term id {terms[outside[0]]}, outside the vocabulary "
                             f"[0, {vocab_size})")
        repeated = _repeated_term(indptr, terms)
        if repeated is not None:  # the constructor's names a 0-based row of this batch: row 808 for row 9,001
            raise ValueError(f"row {first_row + repeated[0] + 1} holds term {repeated[1]} twice; a row holds each "
                             "term once")
        weights = np.asarray(val.flatten(), np.float32)
        bad = _bad_weight(weights, indptr)
        if bad is not None:  # found at the index stage, after the encode, with no file or row named
            raise ValueError(f"row {first_row + bad[0] + 1} has the weight {bad[1]}; a weight is finite, ≥ 0 and at "
                             f"most {MAX_DOC_WEIGHT:g}")
        return cls(indptr, terms, weights, vocab_size, vocab)

    def write_parquet(self, path: str | Path, ids: Sequence[str] | None = None, *, with_vocab: bool = False) -> None:
        """Write atomically (temp file renamed into place, so a crash never leaves half a file); see ``to_arrow``."""
        table = self.to_arrow(ids, with_vocab=with_vocab)
        write_output(Path(path), lambda fh: write_sealed_parquet(fh, table, compression="zstd"))

    @classmethod
    def read_parquet(cls, path: str | Path, vocab: Sequence[str] | None = None) -> tuple["SparseBatch", list[str] | None]:
        """Returns (batch, ids or None); ``vocab`` names the terms when the file does not carry them. A missing path,
        a folder or a file that is no Parquet is one error naming the path (pyarrow's named no file, or said only
        "Parquet magic bytes not found in footer")."""
        path = Path(path)
        if not path.is_file():
            raise (IsADirectoryError if path.is_dir() else FileNotFoundError)(
                f"{path} is {'a folder' if path.is_dir() else 'not there'}; give a vectors file (`lsr encode --output`"
                " or SparseBatch.write_parquet)")
        try:
            names = pq.read_schema(path).names
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{path} is not a Parquet file ({exc})") from None
        check_parquet_seal(path)
        table = pq.read_table(path, columns=[c for c in ("id", "indices", "values") if c in names],
                              page_checksum_verification=True)
        ids = table.column("id").to_pylist() if "id" in table.column_names else None
        return cls.from_arrow(table, vocab), ids
