"""Load a BEIR dataset (corpus, queries, qrels) from a folder, a .zip or a .tar.gz.

Archives are read in place (no unpacking to disk), so the shared read-only copies work as-is.
Qrels files from the official zips have CRLF line endings; the parser accepts both.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator


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


class BeirSource:
    """Uniform member access over a directory, a zip or a tar archive, rooted at the dataset folder."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self.kind, self.names = "dir", {str(p.relative_to(path)).replace("\\", "/") for p in path.rglob("*") if p.is_file()}
        elif zipfile.is_zipfile(path):
            self.kind, self.archive = "zip", zipfile.ZipFile(path)
            self.names = {n for n in self.archive.namelist() if not n.endswith("/")}
        elif tarfile.is_tarfile(path):
            self.kind, self.archive = "tar", tarfile.open(path)
            self.names = {m.name for m in self.archive.getmembers() if m.isfile()}
        else:
            raise ValueError(f"{path} is not a BEIR folder, .zip or .tar.gz archive")
        corpus = sorted((n for n in self.names if n.endswith("corpus.jsonl")), key=len)
        if not corpus:
            raise FileNotFoundError(f"{path} holds no corpus.jsonl; is it a BEIR dataset?")
        self.root = corpus[0][: -len("corpus.jsonl")]

    def has(self, member: str) -> bool:
        return self.root + member in self.names

    def size(self, member: str) -> int:
        """Uncompressed size in bytes of a member (for progress fractions)."""
        name = self._name(member)
        if self.kind == "dir":
            return (self.path / name).stat().st_size
        if self.kind == "zip":
            return self.archive.getinfo(name).file_size
        return self.archive.getmember(name).size

    def _name(self, member: str) -> str:
        name = self.root + member
        if name not in self.names:
            raise FileNotFoundError(f"{self.path} has no {member}")
        return name

    def open(self, member: str) -> IO[bytes]:
        name = self._name(member)
        if self.kind == "dir":
            return open(self.path / name, "rb")
        if self.kind == "zip":
            return self.archive.open(name)
        return self.archive.extractfile(name)


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
