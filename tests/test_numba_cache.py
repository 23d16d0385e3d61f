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


_KERNEL = '''
from lsr.index.jit import njit

@njit(cache=True, nogil=True)
def triangle(n):
    total = 0
    for i in range(n + 1):
        total += i
    return total
'''

_RUN = "import sys; sys.path.insert(0, sys.argv[1]); import kernel; print(kernel.triangle(10))"


def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        for at in range(len(data) // 4, len(data), 7):
            data[at] ^= 0xA5
    path.write_bytes(bytes(data[: len(data) // 2]) if how == "cut" else bytes(data))


def test_a_damaged_numba_cache_file_is_compiled_anew_and_rewritten(tmp_path):
    """numba unpickles its cache files unchecked: one flipped or cut file failed every search with the unpickler's
    words ("'utf-8' codec can't decode byte ...") until someone found and deleted it. Now it is a cache miss."""
    import subprocess
    import sys

    (tmp_path / "kernel.py").write_text(_KERNEL)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _RUN, str(tmp_path)], capture_output=True, text=True, env=env,
                              timeout=300)

    assert run().stdout == "55\n"
    for suffix, how in ((".nbc", "flip"), (".nbi", "cut"), (".nbc", "cut"), (".nbi", "flip")):
        (cached,) = (tmp_path / "cache").rglob(f"*{suffix}")
        _damage(cached, how)
        damaged = run()
        assert (damaged.returncode, damaged.stdout) == (0, "55\n"), damaged.stderr
        assert "numba's cache of compiled code for" in damaged.stderr and "compiling anew" in damaged.stderr
        assert run().stderr == ""  # rewritten by that compile
