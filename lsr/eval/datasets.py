"""BEIR datasets: find one (given path, data dir, $LSR_BEIR_DIR, cache, download) and load it.

Archives are read in place (no unpacking to disk), so the shared read-only copies work as-is.
Qrels files from the official zips have CRLF line endings; the parser accepts both.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from lsr.files import cache_dir
from lsr.ingest.beir_source import BeirSource

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# md5 of the official zips, as published in the BEIR README's dataset table.
BEIR_MD5 = {
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
}


@dataclass
class BeirDataset:
    name: str
    corpus: dict[str, dict[str, str]]  # doc id → {"title", "text"}
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # split → qid → docid → grade

    def doc_texts(self, ids: list[str] | None = None) -> list[str]:
        """``title + " " + text`` per document (the BEIR convention), stripped."""
        ids = list(self.corpus) if ids is None else ids
        return [f"{self.corpus[i]['title']} {self.corpus[i]['text']}".strip() for i in ids]


def _jsonl(fh: IO[bytes], what: str) -> Iterator[dict]:
    for line_no, line in enumerate(io.TextIOWrapper(fh, encoding="utf-8"), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{what} line {line_no}: invalid JSON ({exc.msg})") from None


def read_qrels(fh: IO[bytes]) -> dict[str, dict[str, int]]:
    """``query-id  corpus-id  score`` TSV with a header; CRLF or LF."""
    qrels: dict[str, dict[str, int]] = {}
    for line_no, line in enumerate(io.TextIOWrapper(fh, encoding="utf-8", newline=None)):
        parts = line.rstrip("\r\n").split("\t")
        if line_no == 0 and parts[0] == "query-id" or len(parts) < 3:
            continue
        qrels.setdefault(parts[0], {})[parts[1]] = int(float(parts[2]))
    return qrels


def load_beir(path: str | Path, splits: tuple[str, ...] = ("test", "train", "dev")) -> BeirDataset:
    """Read corpus, queries and whichever of ``splits`` exist under ``qrels/``."""
    path = Path(path)
    src = BeirSource(path)
    name = Path(src.root.rstrip("/")).name if src.root else path.name.split(".")[0]
    with src.open("corpus.jsonl") as fh:
        corpus = {
            str(row["_id"]): {"title": row.get("title") or "", "text": row.get("text") or ""}
            for row in _jsonl(fh, "corpus.jsonl")
        }
    with src.open("queries.jsonl") as fh:
        queries = {str(row["_id"]): row.get("text") or "" for row in _jsonl(fh, "queries.jsonl")}
    qrels = {}
    for split in splits:
        if src.has(f"qrels/{split}.tsv"):
            with src.open(f"qrels/{split}.tsv") as fh:
                qrels[split] = read_qrels(fh)
    return BeirDataset(name, corpus, queries, qrels)


def _candidates(folder: Path, name: str) -> list[Path]:
    return [folder / name, folder / f"{name}.zip", folder / f"{name}.tar.gz", folder / f"{name}.tgz"]


def locate_dataset(name_or_path: str, data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """A path as given; else NAME in ``data_dir``, ``$LSR_BEIR_DIR``, the cache; else download it."""
    given = Path(name_or_path).expanduser()
    if given.exists():
        return given
    if os.sep in name_or_path or name_or_path.endswith((".zip", ".tar.gz")):
        raise FileNotFoundError(f"BEIR dataset {name_or_path} does not exist")
    folders = [Path(d).expanduser() for d in (data_dir, os.environ.get("LSR_BEIR_DIR")) if d]
    folders.append(cache_dir() / "beir")
    for folder in folders:
        for candidate in _candidates(folder, name_or_path):
            if candidate.exists():
                return candidate
    looked = ", ".join(str(f) for f in folders)
    if not download:
        raise FileNotFoundError(f"BEIR dataset {name_or_path!r} not found in {looked}")
    return download_dataset(name_or_path, cache_dir() / "beir", looked)


def download_dataset(name: str, folder: Path, looked: str = "") -> Path:
    """Fetch the official zip into ``folder`` and verify its published md5 before keeping it."""
    if name not in BEIR_MD5:
        raise FileNotFoundError(
            f"BEIR dataset {name!r} not found (looked in {looked}) and it has no pinned checksum to download against; "
            f"download {BEIR_URL.format(name=name)} yourself and pass --data-dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    target, tmp = folder / f"{name}.zip", folder / f"{name}.zip.part"
    url = BEIR_URL.format(name=name)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as fh:
            for block in iter(lambda: response.read(1 << 20), b""):
                fh.write(block)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"BEIR dataset {name!r} is not available locally (looked in {looked}) and downloading {url} failed ({exc}). "
            "Set LSR_BEIR_DIR or --data-dir to a folder holding it, or go online"
        ) from None
    md5 = hashlib.md5(tmp.read_bytes()).hexdigest()
    if md5 != BEIR_MD5[name]:
        tmp.unlink()
        raise ValueError(f"downloaded {url} has md5 {md5}, expected {BEIR_MD5[name]}; not using it (retry later)")
    if not zipfile.is_zipfile(tmp):
        tmp.unlink()
        raise ValueError(f"downloaded {url} is not a zip archive")
    tmp.replace(target)
    return target
