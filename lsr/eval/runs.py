"""TREC run and qrels files: what ``lsr search --topics`` writes and ``lsr eval`` reads.

A run line is ``qid Q0 docid rank score tag`` (whitespace separated, ranks from 1). Qrels are
either TREC's ``qid 0 docid grade`` or BEIR's TSV ``query-id corpus-id score`` with a header.
Topics are a TSV ``qid<TAB>text`` (an optional header, the first non-blank line, is skipped) or JSONL with
``_id``/``id``/``qid`` and ``text``/``query`` (BEIR's queries.jsonl as it is).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import IO, Iterable

from lsr.encode.texts import check_query_length, invalid_json, is_blank, json_line, surrogate_at
from lsr.eval.metrics import Run
from lsr.files import read_text_file, text_lines
from lsr.sparse import id_problem, short_repr

_ID_KEYS = ("_id", "id", "qid", "query_id")
_TEXT_KEYS = ("text", "query", "title")
_ID_COLUMNS = ("qid", "query-id", "query_id", "id", "_id")  # a TSV header's names for its columns
_TEXT_COLUMNS = ("query", "text", "title", "question")
MAX_GRADE = 2**31 - 1  # pytrec_eval keeps grades as C ints
_ASCII_SPACE = " \t\n\v\f\r"  # C's isspace(), where trec_eval's sscanf splits a line
_ASCII_SPACES = re.compile(f"[{_ASCII_SPACE}]+")

log = logging.getLogger(__name__)


def write_trec_run(fh: IO[str], qid: str, hits: Iterable[tuple[str, float]], tag: str) -> None:
    """Append one query's ranked hits (best first) in TREC format. An id with whitespace would make a line that
    reads back as other fields (TREC splits on it), so it is refused, naming it."""
    _check_field("query id", qid)
    for rank, (doc_id, score) in enumerate(hits, start=1):
        _check_field("document id", doc_id)
        fh.write(f"{qid} Q0 {doc_id} {rank} {score:.9g} {tag}\n")  # .6f tied fused scores 1e-7 apart


# a line that has tabs is split at tabs (BEIR's TSV), so one that mixes tabs and spaces keeps a space in a field
MIXED = " (where a line mixes tabs and spaces between its fields, use one or the other)"


def _check_field(what: str, value: str) -> None:
    if value.split() != [value]:  # empty, or whitespace inside or around it
        raise ValueError(f"{what} {value!r} is empty or holds whitespace, which a TREC run cannot hold; use ids "
                         "without it, or `lsr search --json` with the queries on standard input")


# trec_eval reads numbers with C's atof: Python's float() also took '1_000' and fullwidth digits, read otherwise there
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number(text: str) -> float:
    """The value of a plain ASCII decimal number, or NaN for any other text."""
    return float(text) if _NUMBER.fullmatch(text) else math.nan


def _is_number(text: str) -> bool:
    return not math.isnan(_number(text))


def read_trec_run(path: str | Path) -> Run:
    """qid → {docid: score}; a line that is not six fields names itself. Scores decide the order, as in trec_eval;
    a run whose scores mostly rise from line to line (rank and score columns swapped) is read with a warning."""
    run: Run = {}
    rising = falling = 0
    for line_no, parts in _rows(path):
        if len(parts) != 6:
            raise ValueError(f"{path} line {line_no}: expected 'qid Q0 docid rank score tag', got {len(parts)} fields")
        score = _number(parts[4])
        if not math.isfinite(score):
            raise ValueError(f"{path} line {line_no}: score {parts[4]!r} is not a finite number")
        if not parts[3].isdigit():
            raise ValueError(f"{path} line {line_no}: rank {parts[3]!r} is not a whole number ≥ 0 (the fields are "
                             "'qid Q0 docid rank score tag')")
        spaced = next((part for part in (parts[0], parts[2]) if part.split() != [part]), None)
        if spaced is not None:  # a tab-separated line's 'doc 1' matched no judgement and scored as a miss unsaid
            raise ValueError(f"{path} line {line_no}: id {spaced!r} is empty or holds whitespace, which no qrels can "
                             f"judge{MIXED}")
        if parts[2] in run.get(parts[0], {}):
            raise ValueError(f"{path} line {line_no}: query {parts[0]!r} ranks document {parts[2]!r} twice")
        hits = run.setdefault(parts[0], {})
        if hits:  # runs are written best first
            last = next(reversed(hits.values()))
            rising, falling = rising + (score > last), falling + (score < last)
        hits[parts[2]] = score
    if rising > falling:
        log.warning("%s: scores rise from line to line in %d of %d steps; scores decide the order (as in trec_eval), "
                    "so each query's last line counts as its best: are the rank and score columns swapped?", path,
                    rising, rising + falling)
    return run


def read_qrels_file(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC (4 fields) or BEIR TSV (3 fields, header skipped) qrels: qid → {docid: grade}."""
    return parse_qrels(_rows(path), str(path))


def parse_qrels(rows: Iterable[tuple[int, list[str]]], source: str) -> dict[str, dict[str, int]]:
    """qid → {docid: grade} from (line number, whitespace-split fields) rows of TREC or BEIR qrels; a bad line
    names ``source`` and itself."""
    qrels: dict[str, dict[str, int]] = {}
    width, beir_header = 0, False  # the first judgement's field count is the file's format
    for line_no, parts in rows:
        if len(parts) == 3 and (parts[0] == "query-id" or not width and parts[0].lower() in _ID_COLUMNS
                                and not _is_number(parts[-1])):  # BEIR's header, or `query_id corpus_id score`
            beir_header = True
            continue
        if not width and len(parts) == 4 and parts[0].lower() in _ID_COLUMNS + ("topic",) and not _is_number(parts[-1]):
            continue  # a TREC qrels file's header line, `qid iter docno rel`: its grade 'rel' was refused
        if len(parts) not in (3, 4):
            swapped = " (a TREC run's 6 fields: the run comes first, `lsr eval RUN QRELS`)" if len(parts) == 6 else ""
            raise ValueError(f"{source} line {line_no}: expected 'qid 0 docid grade' or 'query-id corpus-id score'"
                             f"{swapped}")
        if len(parts) == 3 and not beir_header and parts[1] in ("0", "Q0"):  # its doc id would be read as the grade
            raise ValueError(f"{source} line {line_no}: 'qid 0 docid' lacks TREC's grade (BEIR's qrels are "
                             "'query-id corpus-id score' under that header)")
        width = width or len(parts)
        if len(parts) != width:
            raise ValueError(f"{source} line {line_no}: {len(parts)} fields where the file's first judgement has "
                             f"{width}; TREC's are 'qid 0 docid grade', BEIR's 'query-id corpus-id score'")
        spaced = next((part for part in (parts[0], parts[-2]) if part.split() != [part]), None)
        if spaced is not None:
            raise ValueError(f"{source} line {line_no}: id {spaced!r} is empty or holds whitespace, which no run can "
                             f"name{MIXED}")
        grade = _number(parts[-1])
        if not (grade.is_integer() and abs(grade) <= MAX_GRADE):
            raise ValueError(f"{source} line {line_no}: grade {parts[-1]!r} is not a whole number up to {MAX_GRADE:,}")
        judged = qrels.setdefault(parts[0], {})
        if judged.get(parts[-2], int(grade)) != int(grade):  # the last grade was kept without a word
            raise ValueError(f"{source} line {line_no}: judges document {parts[-2]!r} for query {parts[0]!r} again, "
                             f"with grade {int(grade)} after {judged[parts[-2]]}")
        judged[parts[-2]] = int(grade)
    return qrels


def read_topics(path: str | Path) -> list[tuple[str, str]]:
    """(qid, text) pairs in file order from a TSV or JSONL topics file; duplicate or empty ones are errors."""
    path = Path(path)
    content = read_text_file(path, "topics file")
    jsonl = Path(path.name.lower().removesuffix(".gz")).suffix in (".jsonl", ".json", ".ndjson")  # read gunzipped
    lines = [(line_no, line) for line_no, line in enumerate(text_lines(content), start=1) if line.strip()]
    if not jsonl and lines and _is_tsv_header(lines[0][1]):
        lines = lines[1:]
    topics: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line_no, line in lines:
        qid, text = _json_topic(path, line_no, line) if jsonl else _tsv_topic(path, line_no, line)
        if surrogate_at(qid + text) is not None:  # it failed only after the model had loaded
            raise ValueError(f"{path} line {line_no}: query {short_repr(qid)} holds a lone surrogate, not UTF-8 text")
        if qid in seen:
            raise ValueError(f"{path} line {line_no}: duplicate query id {qid!r}")
        problem = id_problem(qid)  # as a document's: a NUL or a 100,000-character id went into the run
        if problem is not None:
            raise ValueError(f"{path} line {line_no}: query id {short_repr(qid)} {problem}")
        if is_blank(text):  # as search_batch judges it, before the model loads
            raise ValueError(f"{path} line {line_no}: query {qid!r} has no text")
        check_query_length(text, f"{path} line {line_no}: query {qid!r}")
        seen.add(qid)
        topics.append((qid, text))
    if not topics:
        raise ValueError(f"{path} holds no topics")
    return topics


def _is_tsv_header(line: str) -> bool:
    """A header is the first non-blank line (a blank line above it made it a query) naming an id column (qid, id,
    ...) or a text column (query, text, title, question: `topic<TAB>query`) beside a name that is no number; a topic
    whose whole text is such a word is as unlikely as a qid "qid", and searching the header cost a wrong query in the
    run (`1<TAB>query` is a topic: a numbered one was dropped)."""
    parts = [part.strip().lower() for part in line.split("\t")]
    return parts[0] in _ID_COLUMNS or (len(parts) > 1 and parts[1] in _TEXT_COLUMNS and not parts[0].isdigit())


def _tsv_topic(path: Path, line_no: int, line: str) -> tuple[str, str]:
    """A line's (qid, text); a third column (a narrative, a second field) was searched as part of the query."""
    parts = line.split("\t")
    if len(parts) != 2:
        raise ValueError(f"{path} line {line_no}: expected 'qid<TAB>text', the two columns of a topics TSV, got "
                         f"{len(parts)} (for JSON topics use a .jsonl file)")
    return parts[0].strip(), parts[1]


def _json_topic(path: Path, line_no: int, line: str) -> tuple[str, str]:
    try:
        row = json_line(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} line {line_no}: {invalid_json(exc)}") from None
    qid = next((row[k] for k in _ID_KEYS if isinstance(row, dict) and isinstance(row.get(k), (str, int))
                and not isinstance(row[k], bool)), None)
    text = next((row[k] for k in _TEXT_KEYS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
    if qid is None or text is None:
        raise ValueError(f"{path} line {line_no}: a topic needs an id ({'/'.join(_ID_KEYS)}) and a text ({'/'.join(_TEXT_KEYS)})")
    return str(qid), text


def _rows(path: str | Path) -> Iterable[tuple[int, list[str]]]:
    for line_no, line in enumerate(text_lines(read_text_file(path)), start=1):
        parts = fields(line)
        if parts:
            yield line_no, parts


def fields(line: str) -> list[str]:
    """A run or qrels line's fields: split at tabs where it has them (BEIR's TSV: an id with a space stays one
    field, which the checks then name, rather than shifting the grade into the doc id), else at whitespace. A BOM
    opening a line (files concatenated with `cat`) is dropped: it went into that line's query id, which then matched
    no judgement; so is whitespace ending it (a trailing tab was a seventh, empty field: "got 7 fields"). Whitespace
    is ASCII's, as trec_eval's: an ideographic space (U+3000) split a line trec_eval reads as fewer fields."""
    line = line.removeprefix("\ufeff").rstrip(_ASCII_SPACE)
    if "\t" in line:
        return [part.strip(_ASCII_SPACE) for part in line.split("\t")]
    return [part for part in _ASCII_SPACES.split(line) if part]
