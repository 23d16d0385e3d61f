"""Pack what a GPU run needs into one folder under the device machine's 64 MiB upload, and unpack it there.

A lent GPU machine (an H200 with torch, Triton, transformers, sentence-transformers, numba and pyarrow
installed, and no network) receives only the working tree and the folders a call carries, 64 MiB in all.
What lsr needs beyond its image travels here:

- the runtime dependencies it lacks, as Python 3.12 wheels (faiss-cpu, bm25s, PyStemmer, pytrec-eval);
- the two bundled models, as their weights rounded to bf16, split into high- and low-byte planes and
  xz-compressed (splade-tiny 17 -> 6 MiB, MiniLM 87 -> 30 MiB). There they are written back as fp32
  safetensors into the package folders ``lsr.encode.models`` looks for, so "splade-tiny" and "minilm"
  resolve as if their wheels were installed. The GPU runs compute in bf16, and every system in a
  benchmark loads the same files, so the rounding changes no comparison;
- SciFact, the corpus the GPU benchmarks encode.

    python benchmarks/device_kit.py pack                 # here: writes .device-kit/ (git-ignored), ~1 min
    python3 benchmarks/device_kit.py unpack .device-kit  # there, via benchmarks/gpu_session.sh
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / ".device-kit"
UPLOAD_LIMIT = 64 * 2**20
WHEELS = ("faiss-cpu", "bm25s", "PyStemmer", "pytrec-eval-terrier")  # lsr's runtime needs the device image lacks
MODELS = ("splade-tiny", "minilm")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")
DEVICE_PYTHON = "3.12"


# ---------------------------------------------------------------------------- the weights codec
def encode_weights(tensors: dict) -> tuple[list[dict], bytes]:
    """(header, xz bytes): float tensors as bf16 byte planes (high bytes first: they compress well), others raw."""
    import torch

    header, planes_hi, planes_lo, raw = [], [], [], []
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            half = tensor.detach().to(torch.bfloat16).reshape(-1).view(torch.int16).numpy().view("u1").reshape(-1, 2)
            planes_hi.append(half[:, 1].tobytes())
            planes_lo.append(half[:, 0].tobytes())
            header.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                           "codec": "bf16"})
        else:
            raw.append(tensor.contiguous().numpy().tobytes())
            header.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                           "codec": "raw"})
    return header, lzma.compress(b"".join(planes_hi + planes_lo + raw))


def decode_weights(header: list[dict], blob: bytes) -> dict:
    """The inverse of ``encode_weights``: each tensor in its original dtype, floats holding their bf16 values."""
    import numpy as np
    import torch

    data = lzma.decompress(blob)
    floats = [h for h in header if h["codec"] == "bf16"]
    n_float = sum(int(np.prod(h["shape"], dtype=np.int64)) for h in floats)
    hi, lo, cursor = data[:n_float], data[n_float : 2 * n_float], 2 * n_float
    tensors, offset = {}, 0
    for h in header:
        dtype = getattr(torch, h["dtype"])
        count = int(np.prod(h["shape"], dtype=np.int64))
        if h["codec"] == "bf16":
            pairs = np.empty((count, 2), dtype="u1")
            pairs[:, 0] = np.frombuffer(lo, "u1", count, offset)
            pairs[:, 1] = np.frombuffer(hi, "u1", count, offset)
            offset += count
            bf16 = torch.from_numpy(pairs.reshape(-1).view(np.int16).copy()).view(torch.bfloat16)
            tensors[h["name"]] = bf16.to(dtype).reshape(h["shape"])
        else:
            size = count * torch.empty((), dtype=dtype).element_size()
            tensors[h["name"]] = torch.frombuffer(bytearray(data[cursor : cursor + size]), dtype=dtype).reshape(h["shape"])
            cursor += size
    return tensors


# ---------------------------------------------------------------------------- pack (here)
def pack_model(name: str, dest: Path) -> None:
    """``dest``/NAME.json (weights header), NAME.weights.xz, NAME.files.tar.xz (config, tokenizer, the rest)."""
    from safetensors.torch import load_file

    from lsr.encode.models import resolve_model

    folder = Path(resolve_model(name))
    if not (folder / "config.json").exists():
        raise SystemExit(f"device_kit.py: error: model {name!r} is not installed here (pip install -e '.[models]')")
    weights = folder / "model.safetensors"
    header, blob = encode_weights(load_file(weights))
    (dest / f"{name}.weights.xz").write_bytes(blob)
    (dest / f"{name}.json").write_text(json.dumps(header))
    with tarfile.open(dest / f"{name}.files.tar.xz", "w:xz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path != weights:
                tar.add(path, arcname=path.relative_to(folder).as_posix())


def pack_wheels(dest: Path) -> None:
    """The versions installed here, as wheels for the device's Python."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [flag for platform in WHEEL_PLATFORMS for flag in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                    DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(dest), *pins], check=True)


def pack(kit: Path, beir_dir: Path) -> None:
    scifact = beir_dir / "scifact.tar.gz"
    if not scifact.exists():
        raise SystemExit(f"device_kit.py: error: {scifact} not found (set LSR_BEIR_DIR)")
    if kit.exists():
        shutil.rmtree(kit)
    for sub in ("wheels", "models", "data"):
        (kit / sub).mkdir(parents=True)
    pack_wheels(kit / "wheels")
    for name in MODELS:
        pack_model(name, kit / "models")
    shutil.copy2(scifact, kit / "data" / scifact.name)
    total = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    tree = sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())
    print(f"{kit}: {total / 2**20:.1f} MiB, the working tree {tree / 2**20:.1f} MiB; the upload limit is "
          f"{UPLOAD_LIMIT / 2**20:.0f} MiB in all")
    if total + tree > UPLOAD_LIMIT:
        raise SystemExit("device_kit.py: error: the kit and the working tree exceed the device's upload limit")


# ---------------------------------------------------------------------------- unpack (there)
def unpack(kit: Path, root: Path, wheels: bool = True) -> None:
    """Wheels into ``root``/site, models into the package folders lsr resolves, and ``root``/env.sh to source.

    ``wheels=False`` rehearses the rest on a machine whose Python cannot install the device's wheels.
    """
    from safetensors.torch import save_file

    from lsr.encode.models import BUNDLED

    site = root / "site"
    site.mkdir(parents=True, exist_ok=True)
    found = sorted(str(p) for p in (kit / "wheels").glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--upgrade", "--target", str(site), *found], check=True)
    for name in MODELS:
        spec = BUNDLED[name]
        package = site / spec.package
        folder = package / spec.subdir
        folder.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text("")  # a regular package, found before any namespace portion
        header = json.loads((kit / "models" / f"{name}.json").read_text())
        save_file(decode_weights(header, (kit / "models" / f"{name}.weights.xz").read_bytes()),
                  str(folder / "model.safetensors"), metadata={"format": "pt"})
        with tarfile.open(kit / "models" / f"{name}.files.tar.xz") as tar:
            tar.extractall(folder, filter="data")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "LSR_BEIR_DIR": str((kit / "data").resolve()), "HF_HUB_OFFLINE": "1"}
    (root / "env.sh").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    print(f"unpacked {len(found) if wheels else 0} wheels and {len(MODELS)} models into {site}; source {root / 'env.sh'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("pack", help="here: build the kit folder")
    p.add_argument("--kit", type=Path, default=KIT)
    p.add_argument("--beir-dir", type=Path,
                   default=Path(os.environ.get("LSR_BEIR_DIR") or REPO.parent / "shared" / "data" / "beir"))
    u = verbs.add_parser("unpack", help="there: install the kit")
    u.add_argument("kit", type=Path)
    u.add_argument("--root", type=Path, default=Path("/tmp/lsr-kit"))
    u.add_argument("--no-wheels", action="store_true", help="skip the wheels (a rehearsal on another Python)")
    args = parser.parse_args()
    if args.verb == "pack":
        pack(args.kit, args.beir_dir)
    elif not (args.kit / "models").is_dir():  # a bare traceback named one missing model file
        parser.error(f"{args.kit} holds no packed kit: run `python benchmarks/device_kit.py pack` here, then carry "
                     f"{KIT.name} to the device")
    else:
        unpack(args.kit, args.root, wheels=not args.no_wheels)


if __name__ == "__main__":
    main()
