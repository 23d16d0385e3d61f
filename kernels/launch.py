"""Launch choices for the fused pooling kernel, so a fresh process runs at warm speed.

Why: with ``triton.autotune`` keyed on (H, L) every new padded length started a benchmark of every
configuration. On an H100, SciFact with splade-tiny took 20.5 s in a fresh process against 0.66 s
warm, and one BERT-base key cost 7.4 s. Here a launch is keyed on (GPU family, dtype, H, length
bucket, train/inference) and its configuration comes from, in order:

1. with ``LSR_AUTOTUNE=1``, this machine's own tuning, persisted in ``<cache>/triton-tuning.json``
   (``$LSR_CACHE_DIR`` or ~/.cache/lsr) under the Triton version, GPU name and kernel source, so
   later processes reuse it and a new Triton, GPU or kernel ignores it; a key not tuned yet is
   benchmarked once and added;
2. the committed table ``launch_table.json`` (configurations measured on an H100);
3. a heuristic for unseen shapes: the measured winners' tile shapes (smaller ones where the dot
   runs on CUDA cores), shrunk until the pipeline buffers fit the GPU's shared memory.

A launch that still does not fit (another Triton may allocate more) steps down to a smaller
configuration and remembers it, instead of failing. ``benchmarks/kernel_compile.py`` compiles every
choice for each GPU family ahead of time, on a machine without one, to check all of this.

Lengths are bucketed to powers of two from 16: sequences up to 128 pad to the bucket inside the
packed kernel (which needs a power-of-two slot), longer ones loop over sequence tiles, so one
configuration serves every length of a bucket and the result does not depend on the bucket.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import triton

log = logging.getLogger(__name__)

TABLE_PATH = Path(__file__).with_name("launch_table.json")
TUNING_FILE = "triton-tuning.json"
KERNELS = ("tiled", "packed")
MIN_BUCKET = 16  # tl.dot needs at least 16 columns
# Shared memory left for the operand pipeline after the epilogue's scratch.
SHARED_MEMORY_SHARE = 0.85
_FALLBACK_SHARED_MEMORY = 99 * 1024  # the smallest opt-in limit of recent GPUs (sm86/sm89)


def length_bucket(length: int) -> int:
    """The padded length a launch is keyed on: the next power of two, at least 16."""
    return max(MIN_BUCKET, triton.next_power_of_2(max(int(length), 1)))


@dataclass(frozen=True)
class LaunchConfig:
    """One kernel launch: tile sizes (vocabulary, sequence/packed columns, hidden), warps and pipeline stages."""

    block_v: int
    block_n: int  # BLOCK_L of the tiled kernel, BLOCK_N of the packed one
    block_h: int
    warps: int
    stages: int

    def meta(self, kernel: str) -> dict:
        """Keyword arguments of the Triton launch."""
        columns = "BLOCK_L" if kernel == "tiled" else "BLOCK_N"
        return {"BLOCK_V": self.block_v, columns: self.block_n, "BLOCK_H": self.block_h,
                "num_warps": self.warps, "num_stages": self.stages}

    def shared_bytes(self, element_bytes: int, buffers: int) -> int:
        """Shared memory of the operand pipeline: ``buffers`` copies of one K step's two tiles."""
        return buffers * (self.block_v + self.block_n) * self.block_h * element_bytes

    def accumulators_per_thread(self) -> int:
        return self.block_v * self.block_n // (32 * self.warps)


@dataclass(frozen=True)
class LaunchKey:
    gpu: str  # "sm90", ..., or "interpreter"
    kernel: str  # "tiled" or "packed"
    dtype: str  # "fp32", "bf16", "fp16"
    hidden: int
    bucket: int
    train: bool

    def text(self) -> str:
        return f"{self.gpu}/{self.kernel}/{self.dtype}/H{self.hidden}/L{self.bucket}/{'train' if self.train else 'infer'}"


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def launch_key(device: torch.device, interpret: bool, kernel: str, dtype: torch.dtype, hidden: int, length: int,
               train: bool) -> LaunchKey:
    gpu = "interpreter" if interpret else gpu_family(torch.cuda.get_device_capability(device))
    return LaunchKey(gpu, kernel, _DTYPE_NAMES[dtype], hidden, length_bucket(length), train)


def gpu_family(capability: tuple[int, int]) -> str:
    """(8, 6) → ``"sm86"``: how launch keys name a GPU."""
    return "sm{}{}".format(*capability)


def compute_capability(gpu: str) -> int:
    """``"sm86"`` → 86, ``"sm100"`` → 100."""
    return int(gpu[2:])


def tensor_core_dot(gpu: str, dtype: str) -> bool:
    """Whether Triton lowers the kernel's ``tl.dot`` to tensor cores (mma/wgmma/tcgen05) there.

    Not below sm80: Triton's dot is FMA on Turing and Volta. Not in fp32 either: the kernel asks for
    an IEEE fp32 dot (tf32 would cost ~3e-4 relative error), which is FMA on every GPU.
    """
    return dtype != "fp32" and compute_capability(gpu) >= 80


def operand_buffers(key: LaunchKey, config: LaunchConfig) -> int:
    """How many copies of a K step's tiles the compiled pipeline keeps in shared memory.

    Compiled for each family (benchmarks/kernel_compile.py): the TMA pipelines of sm90/sm100 keep
    one per stage; cp.async pipelines (sm80-sm89, sm120) and every FMA dot keep ``stages - 1``.
    Below sm80 (no cp.async) 16-bit loads are not pipelined at all: the figure is an upper bound there.
    """
    tma = tensor_core_dot(key.gpu, key.dtype) and 90 <= compute_capability(key.gpu) < 120
    return config.stages if tma else max(1, config.stages - 1)


def max_accumulators(key: LaunchKey) -> int | None:
    """Accumulators per thread a tile may hold without spilling to local memory (None: no limit found).

    Measured by compiling (benchmarks/kernel_compile.py). FMA dots: fp32 at 128 a thread (128x256 on
    8 warps) spills ~13 KB a thread on sm90, at 64 nothing; fp16 on sm75 converts its operands in
    registers and spills from 32 a thread. tcgen05 (sm100) training tiles, whose epilogue also tracks
    the argmax, spill 0.6-0.8 KB at 128 a thread and nothing at 64. wgmma and mma tiles of 128 a
    thread spill at most 72 B.
    """
    if not tensor_core_dot(key.gpu, key.dtype):
        return 64 if key.dtype == "fp32" else 16
    if key.train and 100 <= compute_capability(key.gpu) < 120:
        return 64
    return None


# (BLOCK_V, BLOCK_N, BLOCK_H, warps, stages) tried when tuning; V is the wgmma M side, the sequence the N side.
_TUNING_CANDIDATES = {
    "tiled": [(128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 64, 64, 4, 4),
              (64, 128, 64, 4, 4), (256, 128, 64, 8, 4), (128, 256, 64, 8, 4), (128, 128, 128, 8, 3), (256, 128, 128, 8, 2)],
    # On an H100 at B=32, L=128 the persistent packed grid beat one program per tile for all of these.
    "packed": [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 256, 128, 8, 2),
               (128, 128, 32, 8, 3)],  # the last for fp32 (FMA): 64 accumulators a thread
}
# The interpreter runs every lane in numpy: small tiles keep CPU tests fast.
_INTERPRETER_CANDIDATES = {
    "tiled": [(64, 16, 32, 4, 1), (32, 32, 32, 4, 1)],
    "packed": [(32, 128, 32, 4, 1), (32, 64, 32, 4, 1)],
}
MAX_PACKED_SEQS = 8  # a packed tile holds 1..8 whole sequences; each costs a masked max pass


def fits(kernel: str, bucket: int, config: LaunchConfig) -> bool:
    """A tiled kernel's sequence tile must not dwarf the sequence; a packed tile holds 1..8 whole (padded) sequences."""
    if kernel == "tiled":
        return config.block_n <= bucket
    return bucket <= config.block_n <= bucket * MAX_PACKED_SEQS


def candidates(key: LaunchKey) -> list[LaunchConfig]:
    """What ``LSR_AUTOTUNE=1`` measures: the configurations that fit the kernel and, where one is known, the
    accumulator cap (an fp32 tile that spills takes seconds to compile and would only lose)."""
    pool = _INTERPRETER_CANDIDATES if key.gpu == "interpreter" else _TUNING_CANDIDATES
    configs = [LaunchConfig(*c) for c in pool[key.kernel]]
    fitting = [c for c in configs if fits(key.kernel, key.bucket, c)] or [_smallest_fit(key, configs)]
    cap = None if key.gpu == "interpreter" else max_accumulators(key)
    return [c for c in fitting if cap is None or c.accumulators_per_thread() <= cap] or fitting


def _smallest_fit(key: LaunchKey, configs: list[LaunchConfig]) -> LaunchConfig:
    config = min(configs, key=lambda c: c.block_n)
    if key.kernel == "packed":  # at least one whole sequence per tile
        return replace(config, block_n=max(config.block_n, key.bucket))
    return replace(config, block_n=key.bucket)


@functools.lru_cache(maxsize=1)
def launch_table() -> dict[str, LaunchConfig]:
    """The committed table: key text → configuration."""
    raw = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
    return {entry["key"]: LaunchConfig(*entry["config"]) for entry in raw["entries"]}


def heuristic(key: LaunchKey, shared_memory: int) -> LaunchConfig:
    """Unseen shapes: the H100 winners' tiles, smaller where they would spill, stepped down until they fit."""
    if key.gpu == "interpreter":
        return candidates(key)[0]
    if key.kernel == "packed":
        config = LaunchConfig(128, 256 if key.bucket >= 32 else 128, 64, 8, 4 if key.train else 3)
    else:
        config = LaunchConfig(128, 256 if key.bucket >= 256 else max(MIN_BUCKET, min(128, key.bucket)), 64, 8, 3)
    if not tensor_core_dot(key.gpu, key.dtype):  # a CUDA-core dot gains nothing from a wide K step
        config = replace(config, block_h=32)
    cap = max_accumulators(key)
    while cap is not None and config.accumulators_per_thread() > cap:
        smaller = _smaller_tile(key, config)
        if smaller is None:
            break
        config = smaller
    element = 4 if key.dtype == "fp32" else 2
    budget = SHARED_MEMORY_SHARE * shared_memory
    while config.shared_bytes(element, operand_buffers(key, config)) > budget:
        smaller = step_down(key, config)
        if smaller is None:
            break
        config = smaller
    return config


def step_down(key: LaunchKey, config: LaunchConfig) -> LaunchConfig | None:
    """The next smaller configuration: fewer stages, then a narrower K step, then a smaller tile; None at the end."""
    if config.stages > 2:
        return replace(config, stages=config.stages - 1)
    if config.block_h > 32:
        return replace(config, block_h=config.block_h // 2)
    return _smaller_tile(key, config)


def _smaller_tile(key: LaunchKey, config: LaunchConfig) -> LaunchConfig | None:
    """Halve the sequence side while it holds more than one sequence (packed) or 16 columns, then the vocabulary side.

    A tensor-core tile sheds warps with its rows (a warpgroup per 64 rows); an FMA tile keeps them, so
    each thread holds fewer accumulators."""
    if config.block_n > (key.bucket if key.kernel == "packed" else MIN_BUCKET):
        return replace(config, block_n=config.block_n // 2)
    if config.block_v > 32:
        warps = max(4, config.warps // 2) if tensor_core_dot(key.gpu, key.dtype) else config.warps
        return replace(config, block_v=config.block_v // 2, warps=warps)
    return None


def shared_memory_of(device: torch.device, interpret: bool) -> int:
    if interpret:
        return _FALLBACK_SHARED_MEMORY
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or _FALLBACK_SHARED_MEMORY)


def autotune_enabled() -> bool:
    return os.environ.get("LSR_AUTOTUNE", "0").lower() in ("1", "true", "on", "yes")


class TuningCache:
    """Tuned configurations on disk, valid only for one (Triton version, GPU name, kernel source) stamp.

    Entries under any other stamp are ignored; those of this GPU are dropped on the next write, so
    the file does not grow with every Triton upgrade. Writers merge under an exclusive lock and
    replace the file atomically, so concurrent processes tuning different keys keep both.
    """

    def __init__(self, path: Path, stamp: str) -> None:
        self.path = path
        self.stamp = stamp

    def load(self) -> dict[str, LaunchConfig]:
        """This stamp's entries that are well formed; the rest (a file of another shape, an entry edited by hand or
        written by another version) are set aside with a warning and tuned again."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:  # half-written by a crashed old version, or unreadable
            log.warning("ignoring the Triton tuning cache %s (%s); tuning again", self.path, error)
            return {}
        entries = raw.get(self.stamp, {}) if isinstance(raw, dict) else None
        if not isinstance(entries, dict):
            log.warning("ignoring the Triton tuning cache %s: not a map of stamps to entries; tuning again", self.path)
            return {}
        kept = {key: config for key, config in ((key, well_formed(value)) for key, value in entries.items()) if config}
        if len(kept) < len(entries):
            log.warning("ignoring %d malformed entry(ies) of the Triton tuning cache %s; tuning again",
                        len(entries) - len(kept), self.path)
        return kept

    def store(self, key: str, config: LaunchConfig) -> None:
        """Merge one entry under an exclusive lock; a cache that cannot be written costs later processes a tuning
        run, never this launch (a warning says so)."""
        from lsr.files import write_json_atomic

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    raw = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    raw = {}
                device = self.stamp.split("|")[1]
                raw = {s: v for s, v in raw.items() if isinstance(v, dict) and (s == self.stamp or s.split("|")[1:2] != [device])
                       } if isinstance(raw, dict) else {}
                mine = {k: v for k, v in raw.get(self.stamp, {}).items() if well_formed(v)}
                raw[self.stamp] = {**mine, key: list(astuple(config))}
                write_json_atomic(self.path, raw)
        except OSError as error:
            log.warning("could not save a tuned launch in %s (%s); later processes will tune it again", self.path, error)


def well_formed(value) -> LaunchConfig | None:
    """A cached entry as a configuration Triton can launch (five positive whole numbers, power-of-two tiles and
    warps), or None."""
    if not isinstance(value, list) or len(value) != 5 or not all(type(v) is int and v > 0 for v in value):
        return None
    config = LaunchConfig(*value)
    tiles = (config.block_v, config.block_n, config.block_h, config.warps)
    return config if all(v & (v - 1) == 0 for v in tiles) else None


def tuning_stamp(device_name: str, kernel_source: str) -> str:
    return f"triton {triton.__version__}|{device_name}|{hashlib.sha256(kernel_source.encode()).hexdigest()[:16]}"


def tuning_cache(device: torch.device, interpret: bool, kernel_source: str) -> TuningCache:
    from lsr.files import cache_dir

    name = "interpreter" if interpret else torch.cuda.get_device_name(device)
    return TuningCache(cache_dir() / TUNING_FILE, tuning_stamp(name, kernel_source))


def tune(key: LaunchKey, launch: Callable[[LaunchConfig], None], timer: Callable[[Callable[[], None]], float]
         ) -> LaunchConfig:
    """The fastest candidate for this launch by ``timer``; candidates that fail to compile are skipped."""
    best, best_time = None, float("inf")
    for config in candidates(key):
        try:
            seconds = timer(lambda: launch(config))
        except triton.runtime.errors.OutOfResources:
            continue
        if seconds < best_time:
            best, best_time = config, seconds
    if best is None:
        raise RuntimeError(f"no launch configuration of {key.text()} fits this GPU")
    log.info("tuned %s: %s (%.3f ms)", key.text(), astuple(best), best_time * 1e3)
    return best


def wall_timer(fn: Callable[[], None]) -> float:
    """Seconds of one call after a warm-up call (the interpreter's stand-in for CUDA-event timing)."""
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cuda_timer(fn: Callable[[], None]) -> float:
    return triton.testing.do_bench(fn, warmup=5, rep=25) / 1e3


class LaunchChooser:
    """Per-process memo in front of the tuning cache, the committed table and the heuristic."""

    def __init__(self, kernel_source: str) -> None:
        self.kernel_source = kernel_source
        self._chosen: dict[LaunchKey, LaunchConfig] = {}
        self._lock = threading.Lock()

    def launch(self, key: LaunchKey, device: torch.device, interpret: bool,
               launch: Callable[[LaunchConfig], None]) -> LaunchConfig:
        """Launch with the chosen configuration. One that does not fit this GPU (Triton raises before
        running anything) steps down until one does, and the smaller one is remembered for the key."""
        config = self.choose(key, device, interpret, launch)
        while True:
            try:
                launch(config)
                return config
            except triton.runtime.errors.OutOfResources as error:
                smaller = step_down(key, config)
                if smaller is None:
                    raise
                log.warning("%s: %s does not fit this GPU (%s); using %s instead",
                            key.text(), astuple(config), error, astuple(smaller))
                with self._lock:
                    self._chosen[key] = smaller
                config = smaller

    def choose(self, key: LaunchKey, device: torch.device, interpret: bool,
               launch: Callable[[LaunchConfig], None]) -> LaunchConfig:
        config = self._chosen.get(key)
        if config is not None:
            return config
        with self._lock:  # one thread tunes a key; the others wait for its answer
            config = self._chosen.get(key) or self._pick(key, device, interpret, launch)
            self._chosen[key] = config
        return config

    def _pick(self, key: LaunchKey, device: torch.device, interpret: bool,
              launch: Callable[[LaunchConfig], None]) -> LaunchConfig:
        if autotune_enabled():
            cache = tuning_cache(device, interpret, self.kernel_source)
            config = cache.load().get(key.text())
            if config is not None and not fits(key.kernel, key.bucket, config):
                log.warning("the Triton tuning cache's %s for %s does not fit the kernel; tuning again",
                            astuple(config), key.text())
                config = None
            if config is None:
                config = tune(key, launch, wall_timer if interpret else cuda_timer)
                cache.store(key.text(), config)
            return config
        return launch_table().get(key.text()) or heuristic(key, shared_memory_of(device, interpret))

    def forget(self) -> None:
        """Drop the in-process memo (tests; a changed LSR_AUTOTUNE)."""
        with self._lock:
            self._chosen.clear()
