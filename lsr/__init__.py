"""lsr: learned sparse retrieval.

The public API is importable from the top (``from lsr import SpladeEncoder, Searcher``) and
loaded lazily, so ``import lsr`` costs no torch import until an encoder is used. The folders
follow the data flow: ``encode`` → ``ingest`` → ``search`` (+ ``lsr.index``) → ``eval``, with
``cli`` in front; ``sparse`` and ``files`` are the types and helpers every stage shares.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping  # 0.15 ms of `import lsr`, where typing costs 2 ms

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing would cost `import lsr` 2 ms

_PUBLIC = {
    "SpladeEncoder": "lsr.encode.splade",
    "DecoderSpladeEncoder": "lsr.encode.splade",
    "InferenceFreeQueryEncoder": "lsr.encode.splade",
    "DenseEncoder": "lsr.encode.dense",
    "Searcher": "lsr.search.searcher",
    "HybridOptions": "lsr.search.searcher",
    "PrfOptions": "lsr.search.searcher",
    "SearchResult": "lsr.search.searcher",
    "ScoredHit": "lsr.search.searcher",
    "search_topics": "lsr.search.batch",
    "SparseBatch": "lsr.sparse",
    "InvertedIndex": "lsr.index",
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from lsr.encode.dense import DenseEncoder
    from lsr.encode.splade import DecoderSpladeEncoder, InferenceFreeQueryEncoder, SpladeEncoder
    from lsr.index import InvertedIndex
    from lsr.search.batch import search_topics
    from lsr.search.searcher import HybridOptions, PrfOptions, ScoredHit, Searcher, SearchResult
    from lsr.sparse import SparseBatch

    __version__: str


def numba_cache_folder(package: str, env: Mapping[str, str], temp_root: str | None = None) -> str | None:
    """Where numba should cache compiled kernels when it cannot on its own, else None. numba's ``cache=True`` fails at
    import ("cannot cache function ... no locator available") where neither the folders of the sources nor the
    user's cache folder take files: a read-only image run as a user whose HOME is /nonexistent failed every verb."""
    import os

    if env.get("NUMBA_CACHE_DIR") or (os.path.isdir(package) and os.access(package, os.W_OK)):
        return None
    folder = os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or "/nonexistent", ".cache"), "numba")
    while not os.path.exists(folder):  # numba makes the folders it lacks
        folder = os.path.dirname(folder)
    if os.path.isdir(folder) and os.access(folder, os.W_OK):
        return None
    return _private_temp_folder(temp_root)


def _private_temp_folder(temp_root: str | None) -> str:
    """``lsr-numba-cache-UID`` in the temp folder when this user made it and only this user can write it, else a new
    folder of this process's own. numba's cache files are pickles: a fixed name that another user made first (or
    left writable, or linked elsewhere) would have run that user's code as this one."""
    import os
    import stat
    import tempfile

    root = temp_root or tempfile.gettempdir()
    folder = os.path.join(root, f"lsr-numba-cache-{os.getuid()}")
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="lsr-numba-cache-", dir=root)
    held = os.lstat(folder)
    if stat.S_ISDIR(held.st_mode) and held.st_uid == os.getuid() and not held.st_mode & 0o077:
        return folder
    return tempfile.mkdtemp(prefix="lsr-numba-cache-", dir=root)


def _cache_numba_where_it_can() -> None:
    import os

    folder = numba_cache_folder(os.path.dirname(os.path.abspath(__file__)), os.environ)
    if folder is not None:
        os.environ["NUMBA_CACHE_DIR"] = folder


_cache_numba_where_it_can()


def __getattr__(name: str) -> object:
    """Import the module that holds ``name`` on first use (PEP 562); ``__version__`` is the installed version."""
    if name == "__version__":
        from importlib.metadata import version

        globals()[name] = version("lsr")
        return globals()[name]
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lsr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC) | {"__version__"})
