"""BEIR datasets: find one (given path, data dir, $LSR_BEIR_DIR, shared folder, cache, download) and load it.

The shared folder is ``shared/data/beir`` beside the lsr checkout or beside (or inside) the current
directory: the place this project keeps its read-only copies, so a fresh clone works offline.

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

from lsr.encode.texts import invalid_json, is_blank, json_line
from lsr.eval.runs import fields, parse_qrels
from lsr.files import cache_dir
from lsr.ingest.beir_source import BeirSource
from lsr.sparse import id_problem, short_repr

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


def _jsonl(fh: IO[bytes], what: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of each non-blank line of a JSONL file that must hold objects."""
    for line_no, line in enumerate(_utf8_lines(fh, what), start=1):
        if line.strip():
            try:
                row = json_line(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{what} line {line_no}: {invalid_json(exc)}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{what} line {line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def _utf8_lines(fh: IO[bytes], what: str) -> Iterator[str]:
    try:
        yield from io.TextIOWrapper(fh, encoding="utf-8-sig", newline=None)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8 text ({exc.reason}: byte {exc.object[exc.start:exc.start + 1]!r})") from None


def _rows_by_id(fh: IO[bytes], what: str, fields: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """id → {field: text} of a BEIR corpus or queries file, checked as the indexer and a TREC run would check them:
    every row an object with an ``_id`` that is one word, given once, and text fields that are text (or absent)."""
    rows: dict[str, dict[str, str]] = {}
    for line_no, row in _jsonl(fh, what):
        raw = row.get("_id")
        if not isinstance(raw, (str, int)) or isinstance(raw, bool):
            raise ValueError(f"{what} line {line_no}: no _id (a string or an integer)")
        row_id = str(raw)
        problem = id_problem(row_id)
        if problem is not None:
            raise ValueError(f"{what} line {line_no}: _id {short_repr(row_id)} {problem}")
        if row_id in rows:
            raise ValueError(f"{what} line {line_no}: _id {short_repr(row_id)} is given twice")
        bad = next((f for f in fields if not isinstance(row.get(f) or "", str)), None)
        if bad is not None:
            raise ValueError(f"{what} line {line_no}: {bad} is a {type(row[bad]).__name__}, not text")
        rows[row_id] = {f: row.get(f) or "" for f in fields}
    if not rows:
        raise ValueError(f"{what} holds no rows")
    return rows


def read_qrels(fh: IO[bytes], what: str = "qrels") -> dict[str, dict[str, int]]:
    """BEIR's ``query-id  corpus-id  score`` TSV with a header (or TREC's four fields); CRLF or LF."""
    return parse_qrels(((n, fields(line)) for n, line in enumerate(_utf8_lines(fh, what), start=1) if line.split()),
                       what)


def load_beir(path: str | Path, splits: tuple[str, ...] = ("test", "train", "dev")) -> BeirDataset:
    """Read corpus, queries and whichever of ``splits`` exist under ``qrels/``.

    Judgements of queries that queries.jsonl does not hold are left out, with a warning: scored as misses they
    lowered every method's mean (two such lines took a perfect nDCG@10 to 0.67).
    """
    path = Path(path)
    src = BeirSource(path)
    name = Path(src.root.rstrip("/")).name if src.root else path.name.split(".")[0]
    with src.open("corpus.jsonl") as fh:
        corpus = _rows_by_id(fh, "corpus.jsonl", ("title", "text"))
    with src.open("queries.jsonl") as fh:
        queries = {qid: row["text"] for qid, row in _rows_by_id(fh, "queries.jsonl", ("text",)).items()}
    qrels = {}
    for split in splits:
        if src.has(f"qrels/{split}.tsv"):
            with src.open(f"qrels/{split}.tsv") as fh:
                judged = read_qrels(fh, f"qrels/{split}.tsv")
            qrels[split] = {qid: docs for qid, docs in judged.items() if qid in queries}
            if len(qrels[split]) < len(judged):
                log.warning("qrels/%s.tsv judges %d queries that queries.jsonl does not hold (such as %s); they are "
                            "left out", split, len(judged) - len(qrels[split]),
                            short_repr(next(q for q in judged if q not in queries)))
            absent = {d for docs in qrels[split].values() for d, grade in docs.items() if grade > 0 and d not in corpus}
            if absent:  # no search finds them (scored as misses, as BEIR does), and training drops them
                log.warning("qrels/%s.tsv judges %d documents relevant that corpus.jsonl does not hold (such as %s); "
                            "no search can find them", split, len(absent), short_repr(min(absent)))
            blank = next((q for q in qrels[split] if is_blank(queries[q])), None)
            if blank is not None:  # searched as nothing, it scored 0 and lowered every method's mean unsaid
                raise ValueError(f"queries.jsonl: query {short_repr(blank)}, judged in qrels/{split}.tsv, has no text; "
                                 "give it its text, or drop its judgements")
    return BeirDataset(name, corpus, queries, qrels)


def judges_any_document(path: str | Path, split: str) -> bool:
    """Whether qrels/SPLIT.tsv judges relevant a document that corpus.jsonl holds (else every score on the split is
    0); the corpus is read only until one is found."""
    src = BeirSource(Path(path))
    with src.open(f"qrels/{split}.tsv") as fh:
        relevant = {doc for docs in read_qrels(fh, f"qrels/{split}.tsv").values() for doc, grade in docs.items()
                    if grade > 0}
    if relevant:
        with src.open("corpus.jsonl") as fh:
            return any(str(row.get("_id")) in relevant for _, row in _jsonl(fh, "corpus.jsonl"))
    return False


def nothing_to_find(source: str | Path, split: str) -> str:
    """The refusal of a split that judges no document of its corpus relevant."""
    return (f"{source}'s {split} split judges no document of its corpus relevant, so every score on it would be 0; "
            "fix its qrels, or choose another split (--dev-split, or none)")


def _holds_corpus(folder: Path) -> bool:
    """Whether a folder holds a BEIR dataset's corpus.jsonl, itself or in a folder in it (an unpacked archive)."""
    return (folder / "corpus.jsonl").is_file() or any(folder.glob("*/corpus.jsonl"))


def _candidates(folder: Path, name: str) -> list[Path]:
    return [folder / name, folder / f"{name}.zip", folder / f"{name}.tar.gz", folder / f"{name}.tgz"]


def shared_dirs() -> list[Path]:
    """Existing ``shared/data/beir`` folders beside the lsr checkout, beside the current directory, or in it."""
    checkout = Path(__file__).resolve().parents[2]
    cwd = Path.cwd()
    found: list[Path] = []
    for base in (checkout.parent, cwd.parent, cwd):
        folder = base / "shared" / "data" / "beir"
        if folder.is_dir() and folder.resolve() not in {f.resolve() for f in found}:
            found.append(folder)
    return found


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Where a dataset NAME is looked for, in order: ``data_dir``, ``$LSR_BEIR_DIR``, shared folders, the cache.
    A ``data_dir`` that is no folder is an error: a misspelt --data-dir fell through to the shared copies unsaid."""
    if data_dir and not Path(data_dir).expanduser().is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist")
    env = os.environ.get("LSR_BEIR_DIR")
    if env and not Path(env).expanduser().is_dir():  # a typo fell through to the shared copies without a word
        raise FileNotFoundError(f"LSR_BEIR_DIR is {env}, which is no folder; fix it, or unset it")
    folders = [Path(d).expanduser() for d in (data_dir, os.environ.get("LSR_BEIR_DIR")) if d]
    return folders + shared_dirs() + [cache_dir() / "beir"]


def known_names(folders: list[Path]) -> list[str]:
    """Dataset names found in ``folders`` plus those that can be downloaded, sorted."""
    names = set(BEIR_MD5)
    for folder in folders:
        if folder.is_dir():
            for entry in folder.iterdir():
                name = entry.name.removesuffix(".zip").removesuffix(".tar.gz").removesuffix(".tgz")
                if name != entry.name or any((entry / f).is_file() for f in ("corpus.jsonl", "corpus.jsonl.gz")):
                    names.add(name)  # an archive, or a folder holding a corpus: not any folder (a cache, an output)
    return sorted(names)


def locate_dataset(name_or_path: str, data_dir: str | Path | None = None) -> Path:
    """A path as given; else NAME in :func:`search_dirs`; else download it (known names only). A NAME is looked for
    in ``data_dir`` first: a folder of that name in the current directory (a collection called "scifact") was taken
    over the dataset the user pointed at."""
    folders = search_dirs(data_dir)  # a --data-dir that is no folder fails, whatever NAME is
    given = Path(name_or_path).expanduser()
    bare = os.sep not in name_or_path and not name_or_path.endswith((".zip", ".tar.gz"))
    in_data_dir = [c for c in _candidates(folders[0], name_or_path) if c.exists()] if data_dir and bare else []
    if in_data_dir:
        return in_data_dir[0]
    if given.exists() and not (bare and given.is_dir() and not _holds_corpus(given)):
        return given  # a bare NAME's folder here that holds no dataset (the collection `lsr index` made) is passed over
    if not bare:
        raise FileNotFoundError(f"BEIR dataset {name_or_path} does not exist")
    for folder in folders:
        for candidate in _candidates(folder, name_or_path):
            if candidate.exists():
                return candidate
    looked = ", ".join(str(f) for f in folders)
    if name_or_path not in BEIR_MD5:
        raise FileNotFoundError(
            f"unknown BEIR dataset {name_or_path!r}; known: {', '.join(known_names(folders))} "
            f"(looked in {looked}; other datasets: download {BEIR_URL.format(name=name_or_path)} yourself and pass --data-dir)"
        )
    return download_dataset(name_or_path, cache_dir() / "beir", looked)


def download_dataset(name: str, folder: Path, looked: str = "") -> Path:
    """Fetch the official zip into ``folder`` and verify its published md5 before keeping it.

    On any failure the partial file and the folders this call created are removed again.
    """
    if name not in BEIR_MD5:
        raise FileNotFoundError(f"BEIR dataset {name!r} has no pinned checksum to download against; "
                                f"download {BEIR_URL.format(name=name)} yourself and pass --data-dir")
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    target, tmp = folder / f"{name}.zip", folder / f"{name}.zip.part"
    try:
        _fetch_verified(name, tmp, looked)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for path in created:
            path.rmdir()
        raise
    tmp.replace(target)
    return target


def _fetch_verified(name: str, tmp: Path, looked: str) -> None:
    url, md5 = BEIR_URL.format(name=name), BEIR_MD5[name]
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as fh:
            for block in iter(lambda: response.read(1 << 20), b""):
                fh.write(block)
    except OSError as exc:
        raise FileNotFoundError(
            f"BEIR dataset {name!r} is not available locally (looked in {looked}) and downloading {url} failed ({exc}). "
            "Set LSR_BEIR_DIR or --data-dir to a folder holding it, put it in ../shared/data/beir, or go online"
        ) from None
    got = hashlib.md5(tmp.read_bytes()).hexdigest()
    if got != md5:
        raise ValueError(f"downloaded {url} has md5 {got}, expected {md5}; not using it (retry later)")
    if not zipfile.is_zipfile(tmp):
        raise ValueError(f"downloaded {url} is not a zip archive")
