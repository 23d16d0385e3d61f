"""numba's ``njit`` for every lsr kernel, with an on-disk cache that a damaged file cannot break.

numba reads its cache (``__pycache__/*.nbi`` index and ``*.nbc`` code, or ``NUMBA_CACHE_DIR``) without checking it:
one flipped or truncated file (bit rot, a copied image cut short) failed every search with the unpickler's words
("'utf-8' codec can't decode byte ..."), until someone found and deleted the file. An unreadable entry is now a
cache miss: the kernel compiles anew, with one warning, and the save overwrites the damaged file.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from numba import njit
from numba.core import caching

__all__ = ["njit"]

log = logging.getLogger(__name__)


def _miss_when_damaged(read: Callable[..., Any], miss: Callable[[], Any]) -> Callable[..., Any]:
    """``read``, where a failure is logged and answered by ``miss()`` (numba answers a missing file so itself)."""

    def tolerant(cache: Any, *args: Any) -> Any:
        try:
            return read(cache, *args)
        except Exception as exc:  # a pickle of damaged bytes raises nearly anything
            where = getattr(cache, "_index_path", None) or f"{cache._py_func.__qualname__} in {cache._cache_path}"
            log.warning("numba's cache of compiled code for %s is unreadable (%s: %s); compiling anew, which "
                        "rewrites it", where, type(exc).__name__, exc)
            return miss()

    tolerant.lsr_tolerant = True
    return tolerant


if not getattr(caching.IndexDataCacheFile._load_index, "lsr_tolerant", False):
    # the index first: a save reads it too, so a damaged one failed the compile that would have replaced it
    caching.IndexDataCacheFile._load_index = _miss_when_damaged(caching.IndexDataCacheFile._load_index, dict)
    caching.Cache.load_overload = _miss_when_damaged(caching.Cache.load_overload, lambda: None)
