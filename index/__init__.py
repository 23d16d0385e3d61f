"""Inverted index over quantized SPLADE impacts: exact top-k by windowed integer term-at-a-time
scoring, or block-max MaxScore pruning where it skips nearly everything.

``InvertedIndex.build/open/search/search_batch/add/delete/merge/verify``; see ``index.py``.
"""

from .index import Hit, InvertedIndex
from .storage import CorruptIndexError

__all__ = ["CorruptIndexError", "Hit", "InvertedIndex"]
