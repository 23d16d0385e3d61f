"""One immutable segment: a forward store, block-partitioned postings, block maxima and tombstones.

Postings of a term are cut into blocks of at most ``BLOCK_SIZE`` entries whose doc span fits in
16 bits, so a posting is a ``uint16`` delta from its block's first doc plus a quantized impact.
Each block records its first doc, last doc and max impact: the block-max bounds the pruning
kernels skip on. The forward store (doc -> terms) serves ``get_vectors`` and ``merge``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .jit import njit

BLOCK_SIZE = 64
_MAX_SPAN = 65535

# name -> (dtype or None when it is the impact dtype, length key); lengths: n_docs+1, nnz, vocab+1, blocks(+1)
ARRAY_LAYOUT: dict[str, tuple[str | None, str]] = {
    "doc_ptr": ("int64", "docs+1"),
    "doc_terms": ("term", "nnz"),
    "doc_imp": (None, "nnz"),
    "term_blocks": ("int64", "vocab+1"),
    "block_posts": ("int64", "blocks+1"),
    "block_base": ("int32", "blocks"),
    "block_last": ("int32", "blocks"),
    "block_max": (None, "blocks"),
    "post_delta": ("uint16", "nnz"),
    "post_imp": (None, "nnz"),
}


def term_dtype(vocab_size: int) -> np.dtype:
    """uint16 term ids when the vocabulary allows it (BERT's 30522 does): 2 bytes per stored entry."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


@njit(cache=True, nogil=True)
def _invert(indptr, indices, impacts, n_docs, vocab_size, post_doc, post_imp, term_ptr):
    """Counting sort of (doc, term, impact) by term; docs stay ascending within a term."""
    for t in indices:
        term_ptr[t + 1] += 1
    for t in range(vocab_size):
        term_ptr[t + 1] += term_ptr[t]
    cursor = term_ptr[:-1].copy()
    for d in range(n_docs):
        for p in range(indptr[d], indptr[d + 1]):
            t = indices[p]
            c = cursor[t]
            post_doc[c] = d
            post_imp[c] = impacts[p]
            cursor[t] = c + 1


@njit(cache=True, nogil=True)
def _cut_blocks(term_ptr, post_doc, block_size, max_span, count_only, term_blocks, block_posts, block_base):
    """Cut each term's postings into blocks; returns the number of blocks."""
    nb = 0
    vocab_size = len(term_ptr) - 1
    for t in range(vocab_size):
        if not count_only:
            term_blocks[t] = nb
        p = term_ptr[t]
        end = term_ptr[t + 1]
        while p < end:
            base = post_doc[p]
            q = p + 1
            while q < end and q - p < block_size and post_doc[q] - base <= max_span:
                q += 1
            if not count_only:
                block_posts[nb] = p
                block_base[nb] = base
            nb += 1
            p = q
    if not count_only:
        term_blocks[vocab_size] = nb
        block_posts[nb] = term_ptr[vocab_size]
    return nb


@njit(cache=True, nogil=True)
def _fill_blocks(block_posts, block_base, post_doc, post_imp, block_last, block_max, post_delta):
    for b in range(len(block_base)):
        lo = block_posts[b]
        hi = block_posts[b + 1]
        base = block_base[b]
        top = post_imp[lo]
        for p in range(lo, hi):
            post_delta[p] = post_doc[p] - base
            if post_imp[p] > top:
                top = post_imp[p]
        block_last[b] = post_doc[hi - 1]
        block_max[b] = top


def build_arrays(indptr: np.ndarray, indices: np.ndarray, impacts: np.ndarray, vocab_size: int) -> dict[str, np.ndarray]:
    """All segment arrays from a quantized CSR whose zero impacts were already dropped."""
    n_docs = len(indptr) - 1
    nnz = len(indices)
    post_doc = np.empty(nnz, np.int32)
    post_imp = np.empty(nnz, impacts.dtype)
    term_ptr = np.zeros(vocab_size + 1, np.int64)
    _invert(indptr, indices, impacts, n_docs, vocab_size, post_doc, post_imp, term_ptr)
    dummy64, dummy32 = np.zeros(1, np.int64), np.zeros(1, np.int32)
    nb = _cut_blocks(term_ptr, post_doc, BLOCK_SIZE, _MAX_SPAN, True, dummy64, dummy64, dummy32)
    term_blocks = np.zeros(vocab_size + 1, np.int64)
    block_posts = np.zeros(nb + 1, np.int64)
    block_base = np.zeros(nb, np.int32)
    _cut_blocks(term_ptr, post_doc, BLOCK_SIZE, _MAX_SPAN, False, term_blocks, block_posts, block_base)
    block_last = np.zeros(nb, np.int32)
    block_max = np.zeros(nb, impacts.dtype)
    post_delta = np.zeros(nnz, np.uint16)
    _fill_blocks(block_posts, block_base, post_doc, post_imp, block_last, block_max, post_delta)
    return {
        "doc_ptr": np.ascontiguousarray(indptr, np.int64),
        "doc_terms": np.asarray(indices, term_dtype(vocab_size)),
        "doc_imp": impacts,
        "term_blocks": term_blocks,
        "block_posts": block_posts,
        "block_base": block_base,
        "block_last": block_last,
        "block_max": block_max,
        "post_delta": post_delta,
        "post_imp": post_imp,
    }


def expected_lengths(n_docs: int, nnz: int, n_blocks: int, vocab_size: int) -> dict[str, int]:
    sizes = {"docs+1": n_docs + 1, "nnz": nnz, "vocab+1": vocab_size + 1, "blocks+1": n_blocks + 1, "blocks": n_blocks}
    return {name: sizes[key] for name, (_, key) in ARRAY_LAYOUT.items()}


def expected_dtypes(imp_dtype: np.dtype, vocab_size: int) -> dict[str, np.dtype]:
    out = {}
    for name, (kind, _) in ARRAY_LAYOUT.items():
        out[name] = imp_dtype if kind is None else term_dtype(vocab_size) if kind == "term" else np.dtype(kind)
    return out


@njit(cache=True, nogil=True)
def _structure_error(doc_ptr, term_blocks, block_posts, block_base, block_last, n_docs, nnz):
    """0 when pointers and block bounds are consistent, else a code naming the broken array.

    Kernels trust these arrays for their loop bounds, so a corrupted file must be caught here
    instead of turning into an out-of-bounds read.
    """
    if doc_ptr[0] != 0 or doc_ptr[n_docs] != nnz:
        return 1
    for d in range(n_docs):
        if doc_ptr[d + 1] < doc_ptr[d]:
            return 1
    nb = len(block_base)
    if term_blocks[0] != 0 or term_blocks[len(term_blocks) - 1] != nb:
        return 2
    for t in range(len(term_blocks) - 1):
        if term_blocks[t + 1] < term_blocks[t]:
            return 2
    if block_posts[0] != 0 or block_posts[nb] != nnz:
        return 3
    for b in range(nb):
        if block_posts[b + 1] <= block_posts[b]:
            return 3
        if block_base[b] < 0 or block_base[b] > block_last[b] or block_last[b] >= n_docs:
            return 4
    return 0


_STRUCTURE_NAMES = {1: "doc_ptr", 2: "term_blocks", 3: "block_posts", 4: "block_base/block_last"}


def structure_problem(arrays: dict[str, np.ndarray], n_docs: int) -> str | None:
    """Name of the first array whose structure is inconsistent, or None."""
    code = _structure_error(
        arrays["doc_ptr"], arrays["term_blocks"], arrays["block_posts"], arrays["block_base"],
        arrays["block_last"], n_docs, len(arrays["doc_terms"]),
    )
    return _STRUCTURE_NAMES.get(code)


@njit(cache=True, nogil=True)
def _term_stats(term_blocks, block_posts, block_max, term_max, term_df):
    for t in range(len(term_blocks) - 1):
        lo = term_blocks[t]
        hi = term_blocks[t + 1]
        term_df[t] = block_posts[hi] - block_posts[lo]
        for b in range(lo, hi):
            if block_max[b] > term_max[t]:
                term_max[t] = block_max[b]


@dataclass(frozen=True)
class Segment:
    """An immutable view of one segment; deletes produce a new Segment with a new ``deleted`` mask."""

    name: str
    arrays: dict[str, np.ndarray]
    scale: float
    ids: np.ndarray  # object array of str, local doc order
    deleted: np.ndarray  # uint8 [n_docs]
    term_max: np.ndarray
    term_df: np.ndarray
    live: int  # live documents, counted once: searches ask for it on every query
    # id -> local row, built on first use and shared by every Segment of these files (``with_deleted`` keeps it)
    _rows: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def create(cls, name: str, arrays: dict[str, np.ndarray], scale: float, ids: np.ndarray, deleted: np.ndarray) -> "Segment":
        vocab_size = len(arrays["term_blocks"]) - 1
        term_max = np.zeros(vocab_size, arrays["block_max"].dtype)
        term_df = np.zeros(vocab_size, np.int64)
        _term_stats(arrays["term_blocks"], arrays["block_posts"], arrays["block_max"], term_max, term_df)
        return cls(name, arrays, float(scale), ids, deleted, term_max, term_df, _live(deleted))

    @property
    def n_docs(self) -> int:
        return len(self.ids)

    def row(self, doc_id: str) -> int | None:
        """The local row holding ``doc_id``, deleted or not; None when the segment never held it."""
        rows = self._rows.get("map")
        if rows is None:
            rows = self._rows["map"] = {d: r for r, d in enumerate(self.ids.tolist())}
        return rows.get(doc_id)

    def with_deleted(self, deleted: np.ndarray) -> "Segment":
        """The same rows under another tombstone mask."""
        return replace(self, deleted=deleted, live=_live(deleted))

    def deleted_rows(self) -> np.ndarray:
        return np.flatnonzero(self.deleted).astype(np.int64)

    def rows(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR (indptr, term ids, quantized impacts) of the given local rows, in that order."""
        ptr = self.arrays["doc_ptr"]
        local = np.asarray(local, np.int64)
        lengths = ptr[local + 1] - ptr[local]
        indptr = np.zeros(len(local) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        take = np.repeat(ptr[local] - indptr[:-1], lengths) + np.arange(indptr[-1])
        terms = self.arrays["doc_terms"][take].astype(np.int32)
        if len(terms) and int(terms.max()) >= len(self.term_max):
            raise ValueError(f"segment {self.name}: doc_terms holds term ids beyond the vocabulary (corrupted file)")
        return indptr, terms, np.asarray(self.arrays["doc_imp"][take])

    def live_df(self) -> np.ndarray:
        """Document frequency per term counting only live documents."""
        gone = self.deleted_rows()
        if len(gone) == 0:
            return self.term_df
        _, terms, _ = self.rows(gone)
        return self.term_df - np.bincount(terms, minlength=len(self.term_df))


def _live(deleted: np.ndarray) -> int:
    return len(deleted) - int(np.count_nonzero(deleted))
