"""Inverted index over quantized SPLADE impacts: exact top-k with block-max MaxScore pruning.

``InvertedIndex.build/open/search/search_batch/add/delete/merge/verify``; see ``index.py``.
"""

from .index import Hit, InvertedIndex
from .storage import CorruptIndexError

__all__ = ["CorruptIndexError", "Hit", "InvertedIndex"]
