"""Where numba caches compiled kernels when the install and HOME take no files (a read-only image run as a user
whose HOME is /nonexistent): numba's cache=True failed at import there, and with it every verb."""

from __future__ import annotations

import os
import tempfile

from lsr import numba_cache_folder


def test_numba_caches_under_the_temp_folder_only_where_it_cannot_itself(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    fallback = numba_cache_folder(str(not_a_folder), {"HOME": str(not_a_folder / "home")})
    assert fallback == os.path.join(tempfile.gettempdir(), f"lsr-numba-cache-{os.getuid()}")
    assert numba_cache_folder(str(not_a_folder), {"HOME": "/x", "XDG_CACHE_HOME": str(not_a_folder / "c")}) == fallback
    assert numba_cache_folder(str(not_a_folder), {"HOME": str(tmp_path)}) is None  # ~/.cache/numba can be made
    assert numba_cache_folder(str(tmp_path), {"HOME": str(not_a_folder)}) is None  # beside the sources
    assert numba_cache_folder(str(not_a_folder), {"NUMBA_CACHE_DIR": str(tmp_path)}) is None  # the user's choice

