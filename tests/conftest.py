"""Shared fixtures: the real shared BEIR data and the real bundled splade-tiny model."""

from __future__ import annotations

import importlib.util
import os
import socket
from types import ModuleType
from pathlib import Path

# Triton caches TRITON_INTERPRET the first time anything touches it (transformers and torch may),
# so it must be set before any import: without a GPU the kernel tests run in the interpreter.
if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` loaded as a module (the folder is no package), to test its pieces without running it."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def beir_data_dir() -> Path:
    """``$LSR_BEIR_DIR`` or the ``shared/data/beir`` folder beside the checkout."""
    return Path(os.environ.get("LSR_BEIR_DIR") or REPO.parent / "shared" / "data" / "beir")


@pytest.fixture(scope="session")
def beir_dir() -> Path:
    path = beir_data_dir()
    if not (path / "scifact.tar.gz").exists():
        pytest.fail(f"BEIR data not found at {path}; set LSR_BEIR_DIR or place shared/ beside the checkout")
    return path


@pytest.fixture(scope="session")
def scifact(beir_dir):
    from lsr.eval.datasets import load_beir

    return load_beir(beir_dir / "scifact.tar.gz")


@pytest.fixture(scope="session")
def splade():
    """splade-tiny in transformers' modules, whose forward and tokenizer the kernel tests compare against (the
    default CPU load, ``native_bert``, gives the same vectors: tests/test_native_bert.py)."""
    from lsr.encode.splade import SpladeEncoder

    torch.set_num_threads(2)
    return SpladeEncoder.from_pretrained("splade-tiny", device="cpu", backend="transformers")


@pytest.fixture
def free_port() -> int:
    """A localhost port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unwritable_folder(tmp_path) -> Path:
    """An empty folder that refuses this user's writes: one of our own made read-only, or (root writes anywhere) an
    empty one of the kernel's; the test is skipped where there is none."""
    own = tmp_path / "read-only"
    own.mkdir()
    own.chmod(0o555)
    for folder in (own, Path("/sys/kernel/security"), Path("/sys/fs/pstore"), Path("/sys/kernel/software_nodes")):
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                (folder / "probe").touch()
                (folder / "probe").unlink()
        except OSError:
            return folder
    pytest.skip("no empty folder here refuses this user's writes")
