"""Where numba caches compiled kernels when the install and HOME take no files (a read-only image run as a user
whose HOME is /nonexistent): numba's cache=True failed at import there, and with it every verb. The fallback in the
temp folder is one only this user can write: numba's cache files are pickles, loaded and run."""

from __future__ import annotations

import os
import stat

from lsr import numba_cache_folder


def test_numba_caches_under_the_temp_folder_only_where_it_cannot_itself(tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    temp = tmp_path / "tmp"
    temp.mkdir()
    fallback = numba_cache_folder(str(not_a_folder), {"HOME": str(not_a_folder / "home")}, str(temp))
    assert fallback == str(temp / f"lsr-numba-cache-{os.getuid()}")
    assert stat.S_IMODE(os.stat(fallback).st_mode) == 0o700
    no_cache = {"HOME": "/x", "XDG_CACHE_HOME": str(not_a_folder / "c")}
    assert numba_cache_folder(str(not_a_folder), no_cache, str(temp)) == fallback  # made before by this user: kept
    assert numba_cache_folder(str(not_a_folder), {"HOME": str(tmp_path)}) is None  # ~/.cache/numba can be made
    assert numba_cache_folder(str(tmp_path), {"HOME": str(not_a_folder)}) is None  # beside the sources
    assert numba_cache_folder(str(not_a_folder), {"NUMBA_CACHE_DIR": str(tmp_path)}) is None  # the user's choice


def test_a_planted_temp_cache_folder_is_passed_over_for_a_private_one(tmp_path):
    """A folder of that name others can write (another user made it first, world-writable) or a link to elsewhere
    is not used: a process of its own gets a new private folder."""
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    env = {"HOME": str(not_a_folder / "home")}
    for planted in ("open", "link"):
        temp = tmp_path / planted
        temp.mkdir()
        fixed = temp / f"lsr-numba-cache-{os.getuid()}"
        if planted == "open":
            fixed.mkdir()
            fixed.chmod(0o777)
        else:
            (tmp_path / "elsewhere").mkdir(exist_ok=True)
            fixed.symlink_to(tmp_path / "elsewhere")
        folder = numba_cache_folder(str(not_a_folder), env, str(temp))
        assert folder not in (str(fixed), None) and os.path.dirname(folder) == str(temp)
        held = os.lstat(folder)
        assert stat.S_ISDIR(held.st_mode) and stat.S_IMODE(held.st_mode) == 0o700 and held.st_uid == os.getuid()
