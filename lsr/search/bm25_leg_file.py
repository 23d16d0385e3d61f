"""The BM25 leg's documents written since the build, saved beside the build's index.

The build's BM25 index cannot hold documents upserted after it, so an open rebuilt them from the journal by
tokenising every text written since the build: at 60,000 upserted documents an open took 17 s, most of it in
bm25s's tokeniser. A collection now saves its leg as of a journal record (with its dense index: every tenth of
its rows, in the background, and at close), and an open reads it and tokenises only the texts written after
that record. The file is derived state: a missing, stale or damaged one is rebuilt from the journal (and a
damaged one reported by ``lsr verify``; ``lsr repair`` removes it with the rest of the BM25 leg).

Format: one ``.npz`` of the hidden build rows, one chunk of the live upserted documents (``bm25_leg._Chunk``), the
ids and the new words as UTF-8 bytes with offsets, and ``about``: the format, the journal seq the leg holds, and the
build's document and term counts it was made on; ``crc32`` holds every other array's crc32, checked on read.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from lsr.files import NUMPY_LOADS, CorruptFileError, atomic_write
from lsr.search.bm25_index import Bm25Index
from lsr.search.bm25_leg import Bm25Leg

LEG_FILE = "written.npz"
_FORMAT = 1


def save_leg(leg: Bm25Leg, folder: Path, seq: int) -> None:
    """Write ``leg`` (the version holding the journal up to record ``seq``) into ``folder``, atomically."""
    state = leg.saved_state()
    ids, id_ends = _packed(state.pop("ids"))
    words, word_ends = _packed(state.pop("new_words"))
    about = np.asarray([_FORMAT, seq, len(leg.base.ids), len(leg.base.stats.doc_freqs)], np.int64)
    arrays = dict(state, about=about, ids=ids, id_ends=id_ends, words=words, word_ends=word_ends)
    arrays["crc32"] = _crc32s(arrays)
    atomic_write(Path(folder) / LEG_FILE, lambda fh: np.savez(fh, **arrays))


def load_leg(base: Bm25Index, folder: Path) -> tuple[Bm25Leg, int] | None:
    """(the saved leg, the journal seq it holds), or None when there is none or it was saved on another build.
    CorruptFileError when it is damaged."""
    arrays = read_leg_file(Path(folder) / LEG_FILE)
    if arrays is None:
        return None
    _, seq, n_docs, n_vocab = arrays.pop("about").tolist()
    if base.stats is None or (n_docs, n_vocab) != (len(base.ids), len(base.stats.doc_freqs)):
        return None
    ids, words = _unpacked(arrays.pop("ids"), arrays.pop("id_ends")), _unpacked(arrays.pop("words"), arrays.pop("word_ends"))
    return Bm25Leg.from_saved(base, {**arrays, "ids": ids, "new_words": words}), seq


def read_leg_file(path: Path) -> dict[str, np.ndarray] | None:
    """Every array of a leg file, checked; None when there is none. CorruptFileError names a damaged one."""
    if not path.is_file():
        return None
    try:
        with NUMPY_LOADS, np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        if not np.array_equal(arrays.pop("crc32"), _crc32s(arrays)):
            raise ValueError("an array does not match its crc32")
        if arrays["about"][0] != _FORMAT:
            raise ValueError(f"format {arrays['about'][0]}, expected {_FORMAT}")
        _check_shapes(arrays)
        return arrays
    except Exception as exc:  # zip's CRC-32 or header checks, numpy's header parser (SyntaxError), the shapes
        raise CorruptFileError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None


def _check_shapes(arrays: dict[str, np.ndarray]) -> None:
    """The arrays describe one chunk: a CRC-32 vouches for the bytes, this for what they say."""
    ptr, rows, n_docs = arrays["term_ptr"], arrays["rows"], len(arrays["id_ends"])
    whole = [
        len(ptr) == len(arrays["term_ids"]) + 1 and ptr[0] == 0 and bool(np.all(np.diff(ptr) >= 0)),
        ptr[-1] == len(rows) == len(arrays["tfc"]),
        not len(rows) or (rows.min() >= 0 and rows.max() < n_docs),
        (arrays["id_ends"][-1] if n_docs else 0) == len(arrays["ids"]),
        (arrays["word_ends"][-1] if len(arrays["word_ends"]) else 0) == len(arrays["words"]),
        not len(arrays["hidden_rows"]) or (arrays["hidden_rows"].min() >= 0 and arrays["hidden_rows"].max() < arrays["about"][2]),
    ]
    if not all(whole):
        raise ValueError("its arrays do not describe one chunk of documents")


def _crc32s(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Each array's crc32 (its dtype, shape and bytes), by name: zip's own CRC-32 is not checked on every read path."""
    return np.asarray([zlib.crc32(np.ascontiguousarray(arrays[name]).tobytes(),
                                  zlib.crc32(f"{name}{arrays[name].dtype.str}{arrays[name].shape}".encode()))
                       for name in sorted(arrays)], np.int64)


def _packed(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte array and each one's end offset."""
    encoded = [s.encode("utf-8") for s in strings]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), np.uint8), ends


def _unpacked(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.tobytes()
    starts = [0, *ends[:-1].tolist()]
    return [raw[start:end].decode("utf-8") for start, end in zip(starts, ends.tolist())]
