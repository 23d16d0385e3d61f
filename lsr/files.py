"""Crash-safe file writes, content hashes, per-file checksum records and a one-writer folder lock, shared by every store.

A file is written to ``NAME.PID.tmp``, fsynced and renamed over ``NAME``, so a kill at any moment
leaves either the old file or the new one, never half of one (the pid keeps two processes writing the same
file, such as parallel indexing workers or a straggler of a killed job, from sharing a temporary file). A *record* ``{"file", "bytes",
"crc32"}`` describes a file as it was written; checking it later names the file that is missing,
truncated or changed, which is what an operator needs to act on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import inspect
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import weakref
import zlib
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Callable, Iterator


NUMPY_LOADS = threading.Lock()
"""Held around numpy's loads of saved arrays in stores that several threads of one process may open at once (the
shards `lsr search` opens, each shard's background look): numpy parses each array's header with
``ast.literal_eval``, and CPython 3.11 can fail a parse that overlaps another thread's ("SystemError: AST constructor
recursion depth mismatch", cpython gh-106905; seen here with three shards opening at once)."""


def cache_dir() -> Path:
    """``$LSR_CACHE_DIR`` or ``~/.cache/lsr``: downloaded datasets, cached indexes and kernel tunings live here."""
    return Path(os.environ.get("LSR_CACHE_DIR") or Path.home() / ".cache" / "lsr").expanduser()


class CorruptFileError(ValueError):
    """A stored file is missing, truncated or does not match its checksum; the message names it."""


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those above it that do not exist, deepest first: what a write into it makes, for a failed run
    to take away again."""
    return [each for each in (folder, *folder.parents) if not each.exists()]


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` whole or not at all: into a temporary file beside it, renamed over it once complete. A write
    that fails or is interrupted (Ctrl-C, SIGTERM) removes its temporary file; a folder at ``path`` fails first."""
    if path.is_dir():  # found before the work, not at the rename after it
        raise IsADirectoryError(f"{path} is a folder; give the path of a file to write")
    made = missing_folders(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        for folder in made:  # a failed write leaves no folders it made (a full disk left them empty)
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError) and _failed_writing(exc, tmp):
            raise write_failed(path, exc) from exc
        raise


def _failed_writing(exc: OSError, written: Path) -> bool:
    """Whether ``exc`` is the write's own failure: numpy's short write on a full disk said "49803 requested and 49088
    written" and no more (a plain OSError, as a full disk's is), and a folder that takes no file names the file
    written. Any other error is the work's own (an input that is not there), not the write's."""
    return exc.filename == str(written) or exc.filename is None and type(exc) is OSError


def write_output(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file the user named (a run, vectors, a report): ``atomic_write`` into the file a symlink points to (the
    link stays), and straight into a device, FIFO or socket (``/dev/stdout``, a pipe): those were replaced by a regular
    file, so ``--output /dev/full`` said nothing and, run as root, left a text file where the device had been."""
    if is_stream(path):
        try:
            with open(path, "wb") as fh:
                write(fh)
        except OSError as exc:
            if _failed_writing(exc, path):
                raise write_failed(path, exc) from exc
            raise
        return
    atomic_write(Path(os.path.realpath(path)), write)


def is_stream(path: Path) -> bool:
    """Whether ``path`` (its symlinks followed) is there and is no regular file or folder: a device, FIFO or socket."""
    return path.exists() and not path.is_file() and not path.is_dir()


def write_failed(path: Path, cause: OSError) -> OSError:
    """A failed write as one line naming ``path``, keeping ``cause``'s errno, by which a server tells a full disk or a
    folder that takes no writes (RESOURCE_EXHAUSTED, UNAVAILABLE) from its own bug (INTERNAL)."""
    error = OSError(f"could not write {path}: {cause.strerror or cause}"
                    f"{'' if cause.errno else ' (a short write: is the disk full?)'}")
    error.errno = cause.errno or errno.ENOSPC  # numpy's short write on a full disk carries none
    return error


def check_writable(path: Path) -> None:
    """Fail now, in one line, where a file cannot be written at ``path``, rather than after the work that fills it:
    a file is created and removed in its folder, or in the nearest folder above it that exists (a folder it lacks
    is made by the write itself, so a run that fails first leaves none behind)."""
    if path.is_dir():  # the input, not the machine: exit 2, as `lsr beir --out FILE`
        raise ValueError(f"{path} is a folder; give the path of a file to write")
    if is_stream(path):  # written straight into (``write_output``): no file is made beside it
        if not os.access(path, os.W_OK):
            raise OSError(f"cannot write {path}: {os.strerror(errno.EACCES)}")
        return
    path = Path(os.path.realpath(path))  # a symlink's target is written, beside which the temporary file goes
    above = next(folder for folder in path.parents if folder.exists())  # absolute: "/" at the latest
    if not above.is_dir():  # "cannot write ...: File exists", exit 1, for a path under a file
        raise ValueError(f"{above} is a file, not a folder, so {path} cannot be written under it")
    probe = above / f".{path.name}.{os.getpid()}.probe"
    try:
        open(probe, "xb").close()
        probe.unlink()
    except OSError as exc:
        raise OSError(f"cannot write {path}: {exc.strerror or exc}") from None


def check_folder_writable(folder: Path, label: str) -> None:
    """Fail now, in one line, where files cannot be written in ``folder`` (one that lies under a file, cannot be
    made, or takes no file), rather than as a bare errno after the work that fills it. Folders made to test this
    are taken away again, so a run that fails later leaves nothing behind. ``label`` names the folder's role."""
    missing = []
    for existing in (folder, *folder.parents):
        if existing.exists():
            if not existing.is_dir():
                raise FileExistsError(f"cannot create {label} {folder}: {existing} is a file, not a folder")
            break
        missing.append(existing)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise OSError(f"cannot {'create' if missing else 'write in'} {label} {folder}: {exc.strerror or exc}") from None
    finally:
        for made in missing:  # deepest first
            with suppress(OSError):
                made.rmdir()


def text_lines(text: str) -> list[str]:
    """A text file's lines, split at \\n only (a trailing \\r dropped): ``str.splitlines`` also splits at U+2028,
    U+0085 and form feeds, which may sit inside a query or an id."""
    if "\n" not in text:  # a file of old Mac line ends read as one line: "line 1 ... got 12 fields"
        text = text.replace("\r", "\n")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and not lines[-1] else lines


GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # what reading a damaged or fake .gz raises


def open_maybe_gzip(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes, gunzipped as it is read when its name ends in .gz (any case); a damaged
    stream raises one of ``GZIP_ERRORS`` as it is read."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_text_file(path: str | Path, what: str = "") -> str:
    """A UTF-8 text file's content (a BOM dropped: it is no id), gunzipped when its name ends in .gz (runs and qrels
    are often handed out so); a folder, a missing file, a damaged gzip stream and undecodable bytes are one line each
    that names the file (``what`` says which: "topics file"), not a decoder's bare message."""
    if str(path) == "-":  # `lsr search --topics q.tsv --output - | lsr eval - qrels`
        raw = sys.stdin.buffer.read()
        path, label = Path("-"), f"{what} standard input".strip()
        return _decoded(raw, path, label)
    path = Path(path)
    label = f"{what} {path}".strip()
    if path.is_dir():
        raise ValueError(f"{label} is a folder, not a file")
    if not path.exists():  # not is_file(): a pipe, `lsr eval <(zcat run.gz) qrels`, was said not to exist
        raise FileNotFoundError(f"{label} does not exist")
    try:
        with open_maybe_gzip(path) as fh:
            raw = fh.read()
    except GZIP_ERRORS as exc:
        raise ValueError(f"{label} is not a whole gzip file ({exc}); compress it again, or pass it uncompressed") from None
    return _decoded(raw, path, label)


def _decoded(raw: bytes, path: Path, label: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if raw.startswith(b"\x1f\x8b"):  # gzip's magic: "invalid start byte at byte 1" said nothing of it
            raise ValueError(f"{label} is gzip-compressed but its name does not end in .gz; gunzip it, or name it "
                             f"{path.name}.gz") from None
        raise ValueError(f"{label} is not UTF-8 text ({exc.reason} at byte {exc.start:,})") from None


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")))


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


CRC_BLOCK = 1 << 20
# files checksummed at once (``each_problem``): the CPUs this process may use, at most 4
CHECK_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
_CHECKING = threading.local()  # ``stop``: the Event of the ``each_problem`` call this worker thread runs a check for


class _CheckStopped(Exception):
    """A check ``each_problem`` stopped mid-file: its caller was interrupted, or another check raised."""


def crc32_file(path: Path, limit: int | None = None) -> int:
    """crc32 of the file, or of its first ``limit`` bytes (zlib's crc runs at GB/s: cheap enough at open). Read into
    one buffer: a new 4 MB bytes object per read made one thread's check of a 1.9 GB collection 1.0 s, not 0.66."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        remaining = size if limit is None else min(limit, size)
        block = memoryview(bytearray(max(1, min(CRC_BLOCK, remaining))))
        crc = 0
        stop = getattr(_CHECKING, "stop", None)
        while remaining > 0:
            if stop is not None and stop.is_set():
                raise _CheckStopped(path)
            got = f.readinto(block[: min(len(block), remaining)])
            if not got:
                break
            crc = zlib.crc32(block[:got], crc)
            remaining -= got
    return crc


PARQUET_SEAL = b"lsr.crc32"  # a Parquet footer's record of "crc32:length" of every byte before the footer


def seal_parquet(writer: Any, fh: IO[bytes]) -> None:
    """Before ``writer.close()``: record in the footer a crc32 of every byte ``writer`` wrote to ``fh``. Parquet's
    page checksums leave the page headers out, and a flipped bit there (a page's value count or size) was read without
    a word. A stream (``--output /dev/stdout``) cannot be read back: it goes unsealed, as older files are."""
    fh.flush()
    if fh.seekable():
        size = fh.tell()
        writer.add_key_value_metadata({PARQUET_SEAL: f"{crc32_file(Path(fh.name), size)}:{size}"})


def write_sealed_parquet(fh: IO[bytes], table: Any, **options: Any) -> None:
    """``pq.write_table`` with page checksums and ``seal_parquet``."""
    import pyarrow.parquet as pq

    with pq.ParquetWriter(fh, table.schema, write_page_checksum=True, **options) as writer:
        writer.write_table(table)
        seal_parquet(writer, fh)


def check_parquet_seal(path: Path) -> None:
    """CorruptFileError where a sealed Parquet file's bytes are not the ones written (``seal_parquet``)."""
    import pyarrow.parquet as pq

    seal = (pq.read_metadata(path).metadata or {}).get(PARQUET_SEAL)
    if seal is None:
        return
    crc, _, size = seal.partition(b":")
    if not (crc.isdigit() and size.isdigit()) or crc32_file(path, int(size)) != int(crc):
        raise CorruptFileError(f"{path} fails its crc32 checksum (corrupted)")


def arrow_conversions_ready() -> None:
    """Import pandas, where it is installed, now: pyarrow's first conversion of an array to numpy imports it from C++
    and drops whatever that import raised, so a Ctrl-C or SIGTERM landing in its 0.3 s was lost (`lsr verify` ran on
    and printed "intact"), and the half-imported pandas failed each later conversion with an AttributeError."""
    with suppress(ImportError):
        import pandas  # noqa: F401


def leave_signals_to_main() -> None:
    """Run first in a worker thread: the kernel then hands Ctrl-C and SIGTERM to the main thread, whose wait on the
    workers they interrupt at once; one handed to a worker waited, noted only, until the file under check ended."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def each_problem(items: list, check: Callable[[Any], object], errors: type[Exception] | tuple) -> list[str]:
    """``check(item)`` for every item, on up to ``CHECK_THREADS`` threads: the message of each that raised
    ``errors``, in item order. File reads and zlib's crc32 release the GIL: opening a 500,000-document collection
    (1.9 GB, checked in full) took 1.3 s on 2 cores, 2.0 s checking one file at a time. A Ctrl-C, or another error
    raised by a check, stops the checks under way within one read (``crc32_file`` watches the call's ``stop``) and
    drops those not started: it used to wait for every file of an uncached collection to be read."""
    stop = threading.Event()

    def problem(item) -> str | None:
        if stop.is_set():  # the pool may hand out queued items before the stop cancels them: start none
            raise _CheckStopped(item)
        _CHECKING.stop = stop
        try:
            check(item)
        except errors as exc:
            return str(exc)
        finally:
            _CHECKING.stop = None
        return None

    threads = min(len(items), CHECK_THREADS)
    if threads <= 1:
        found = [problem(item) for item in items]
    else:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(threads, thread_name_prefix="lsr-check", initializer=leave_signals_to_main)
        try:
            found = [future.result() for future in [pool.submit(problem, item) for item in items]]
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return [message for message in found if message is not None]


def file_record(path: Path, root: Path | None = None) -> dict:
    """``{"file": name relative to root, "bytes", "crc32"}`` of a file just written."""
    name = path.relative_to(root).as_posix() if root is not None else path.name
    return {"file": name, "bytes": path.stat().st_size, "crc32": crc32_file(path)}


def check_record(root: Path, record: dict) -> Path:
    """The file ``record`` describes, after checking it exists and has the recorded size and crc32."""
    path = root / record["file"]
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CorruptFileError(f"{path} has {size} bytes, {record['bytes']} were written (truncated or overwritten)")
    if crc32_file(path) != record["crc32"]:
        raise CorruptFileError(f"{path} fails its crc32 checksum (corrupted)")
    return path


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sealed(body: dict) -> dict:
    """``body`` plus a ``crc32`` of its canonical form, so a flipped byte in a JSON manifest is caught."""
    return {**body, "crc32": zlib.crc32(canonical_json(body))}


def read_sealed_json(path: Path) -> dict:
    """A JSON manifest written with ``sealed``; errors name the file."""
    try:
        obj = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{path} is not a JSON object")
    body = {k: v for k, v in obj.items() if k != "crc32"}
    if obj.get("crc32") != zlib.crc32(canonical_json(body)):
        raise CorruptFileError(f"{path} fails its checksum (corrupted)")
    return body


class MachineStateError(RuntimeError):
    """A failure of the machine's state, not of the input: the same command can work later (another writer gone, a
    server up again). The CLI exits 1 on it, and 2 on a bad input, so a script can tell a retry from a fix."""


WRITE_WAIT = 30.0  # seconds a write, an open, a repair or a build waits for another process's write to end


class FolderBusyError(MachineStateError):
    """Another process holds ``exclusive_folder`` on the folder; the message says what to do."""


@contextmanager
def exclusive_folder(path: Path, wait: float = 0.0, create: bool = True) -> Iterator[None]:
    """Create folder ``path`` if missing (FileNotFoundError instead, unless ``create``) and hold an exclusive lock
    on it for the block; fail if another process still holds it after ``wait`` seconds.

    Two processes writing one collection (a second ``lsr index --resume`` or ``--overwrite``, a cron job
    overlapping a manual run, two servers or a script writing beside a server) would interleave their files. The
    lock is a ``flock`` on the folder's own descriptor: no file inside that an ``--overwrite`` could delete, and
    the kernel drops it when its process dies, kill -9 included, so a crash never leaves a stale lock behind. A
    filesystem that cannot lock (some FUSE mounts of object storage) gets a warning, once, and no lock, rather
    than no build at all.
    """
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another folder")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _lock_folder(fd, path, time.monotonic() + wait)
        yield
    finally:  # unlocked, not only closed: a child forked meanwhile holds the lock until its copy of fd closes too
        with suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def folder_busy(path: Path) -> bool:
    """Whether another process holds ``exclusive_folder`` on the folder ``path`` now (False where none can)."""
    try:
        with exclusive_folder(path):
            return False
    except FolderBusyError:
        return True


class FolderHold:
    """``exclusive_folder`` shared by one process's threads: the first holder takes the lock (waiting up to ``wait``
    seconds), the last one out releases it, from whichever thread. A collection's writes and its background dense
    save hold it together, so a write never waits for its own process's save, while other processes wait for both.
    The folder must exist: a hold on a collection that was moved away made it anew, empty, where `mv` would then put
    the collection moved back inside it. ``missing()`` raises what a missing folder means (else FileNotFoundError)."""

    def __init__(self, path: Path, missing: Callable[[], None] = lambda: None) -> None:
        self.path = path
        # a bound method weakly: its owner holds this hold, and the cycle kept a dropped collection, and its look
        # thread, alive until a garbage collection ran
        self._missing = weakref.WeakMethod(missing) if inspect.ismethod(missing) else lambda: missing
        self._guard = threading.Lock()
        self._holders = 0
        self._held: ExitStack | None = None

    def acquire(self, wait: float = 0.0) -> None:
        with self._guard:
            if not self._holders:
                held = ExitStack()
                try:
                    held.enter_context(exclusive_folder(self.path, wait, create=False))
                except FileNotFoundError:
                    missing = self._missing()
                    if missing is not None:
                        missing()
                    raise
                self._held = held
            self._holders += 1

    def release(self) -> None:
        with self._guard:
            self._holders -= 1
            if not self._holders:
                self._held.close()
                self._held = None

    @contextmanager
    def held(self, wait: float = 0.0) -> Iterator[None]:
        self.acquire(wait)
        try:
            yield
        finally:
            self.release()


_UNLOCKABLE: set[Path] = set()  # folders on filesystems without flock, warned about once


def _lock_folder(fd: int, path: Path, deadline: float) -> None:
    pause = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                if path not in _UNLOCKABLE:
                    _UNLOCKABLE.add(path)
                    logging.getLogger(__name__).warning(
                        "cannot lock %s on this filesystem (%s); make sure no other process writes it meanwhile",
                        path, os.strerror(exc.errno) if exc.errno else exc)
                return
        if time.monotonic() >= deadline:
            raise FolderBusyError(f"another process (`lsr index`, `lsr train`, `lsr repair` or a writer such as `lsr "
                                  f"serve`) is writing {path} right now; wait for it to finish or stop it, then run "
                                  "this again")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def allow_open_files(count: int) -> bool:
    """Whether ``count`` more files may be held open beside those open now and 256 to spare (sockets, logs), the soft
    limit raised toward the hard one where it must be (Linux's common soft default, 1024, is no real bound)."""
    import resource

    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: assume a few
        open_now = 64
    needed = open_now + count + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return True
    raised = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = raised
    return needed <= soft


def parquet_ids(path: "Path | str | Any") -> list[str]:
    """A Parquet file's ``id`` column (a path, or a file held open, which stays open). Read with ``pq.ParquetFile``:
    ``pq.read_table``'s dataset layer and ``to_numpy`` import pandas, 0.35 s of a fresh process's open. Raises
    pyarrow's errors, KeyError without the column."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        return parquet.read(columns=["id"]).column("id").to_pylist()


# Objects whose locks a child ``os.fork`` made (a pre-fork server's workers, gunicorn --preload, a 'fork'
# multiprocessing pool) gets as the forking moment left them, held by threads it lacks: one forked while its parent
# wrote waited forever at its first write. They register here and reset what only the parent's threads held.
_FORK_RESETS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def reset_in_forked_child(owner: Any) -> None:
    """Call ``owner._after_fork()`` in each child forked while ``owner`` lives, before the child runs anything else."""
    _FORK_RESETS.add(owner)


def _reset_forked_child() -> None:
    for owner in list(_FORK_RESETS):
        owner._after_fork()


os.register_at_fork(after_in_child=_reset_forked_child)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that ask a run to stop, for the handlers that stop it cleanly (checkpoint, drain, resume hint):
    SIGINT, SIGTERM and SIGHUP (a closed terminal or ssh session: it killed a run at once, leaving partial ``.tmp``
    files and no resume hint), unless the process ignores SIGHUP, as under ``nohup``: a handler would undo that."""
    hang_up = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hang_up)
