"""Stream a corpus as (id, text) chunks from BEIR folders/archives, JSONL(.gz), Parquet, CSV or plain text.

A .txt file holds one document per non-blank line; its id is the line number.

Everything is read in bounded blocks with pyarrow, so a corpus larger than RAM streams through.
Clean blocks take pyarrow's fast path; a block pyarrow rejects (invalid JSON, a number where
text belongs) is re-read line by line so the error names the exact line, or the bad rows are
skipped and counted with ``on_error="skip"``. Only the set of seen ids grows with the corpus.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from lsr.encode.texts import invalid_json, is_blank, json_line, surrogate_at
from lsr.files import open_maybe_gzip
from lsr.ingest.beir_source import BeirSource
from lsr.ingest.csv_quotes import strict_rows
from lsr.sparse import SparseBatch, id_problem, short_repr

log = logging.getLogger(__name__)
ON_ERROR = ("fail", "skip")
DEFAULT_FIELDS = ("title", "text")
DEFAULT_ID_FIELD = "_id"
# Read when the corpus lacks the defaults (BEIR's names): pyserini's JSONL is {"id", "contents"}, CSVs say id/docid
OTHER_ID_FIELDS = ("id", "docid", "doc_id")
OTHER_TEXT_FIELD = "contents"
_BLOCK_BYTES = 8 << 20
_PARQUET_ROWS = 8192
_COUNT_MAX_BYTES = 4 << 30  # larger uncompressed files get a streaming estimate instead of a count
# an OSError of these is the machine's (exit 1), not the file's content: the same file may read on another try
_MACHINE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ESTALE,
                   errno.ETIMEDOUT, errno.ENOSPC}
_STRADDLES = "straddles two block boundaries"  # pyarrow's words for one CSV row over two blocks


class BadRowError(ValueError):
    """A row of the corpus cannot be indexed; the message names the line or row and what to do."""

    good_before: "DocChunk"


@dataclass
class DocChunk:
    """Consecutive good documents: ids, the indexed text (fields joined by a space), source line/row numbers,
    and their sparse vectors when the source already holds them (a pre-encoded vectors file), with which of them
    were cut at the encoder's length when the file says."""

    ids: list[str]
    texts: list[str]
    rows: list[int]
    vectors: SparseBatch | None = None
    truncated: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def slice(self, start: int, stop: int | None = None) -> "DocChunk":
        part = slice(start, stop)
        return DocChunk(self.ids[part], self.texts[part], self.rows[part],
                        None if self.vectors is None else self.vectors[part],
                        None if self.truncated is None else self.truncated[part])

    def extend(self, other: "DocChunk") -> "DocChunk":
        """This chunk followed by ``other`` (a new chunk)."""
        vectors = None
        if other.vectors is not None:
            vectors = other.vectors if not len(self) else SparseBatch.concat([self.vectors, other.vectors])
        truncated = None if other.truncated is None else (self.truncated or []) + other.truncated
        return DocChunk(self.ids + other.ids, self.texts + other.texts, self.rows + other.rows, vectors, truncated)


@dataclass
class ReadStats:
    """What the reader saw so far: good docs, skipped rows by reason, and how far into the source it is."""

    docs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    blank: int = 0  # good documents whose text is empty or whitespace (a vectors file's, which need none, aside)
    first_blank: str | None = None  # the id of the first of them, for the warning that counts them
    blank_lines: int = 0  # a .txt file's lines without text: no document (its ids are line numbers), and no row
    bytes_read: int = 0
    bytes_total: int | None = None

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def blank_warning(self, source: object, fields: Sequence[str], stored: str) -> str | None:
        """The line that says how many documents read had no text, or None: ``stored`` says what became of them
        ("indexed", "written"). Their ids stay fetchable, as BEIR keeps them, yet no search can find them."""
        if not self.blank:
            return None
        return (f"{source}: {self.blank:,} of the documents read have no text in their fields {','.join(fields)} (the "
                f"first: id {self.first_blank!r}); they are {stored}, but no search finds them")

    @property
    def fraction(self) -> float | None:
        """Share of the source consumed (for ETA), or None when its size is unknown."""
        if not self.bytes_total:
            return None
        return min(1.0, self.bytes_read / self.bytes_total)


def corpus_format(source: Path) -> str:
    """``beir`` | ``jsonl`` | ``parquet`` | ``csv`` | ``text`` from the path; BEIR archives are .zip / .tar.gz / .tgz."""
    name = source.name.lower()
    if source.is_dir() or name.endswith((".zip", ".tar.gz", ".tgz", ".tar")):
        return "beir"
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson", ".ndjson.gz")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".txt"):
        return "text"
    raise ValueError(f"cannot tell the format of {source}: expected a BEIR folder, .zip, .tar.gz, .jsonl, .jsonl.gz, "
                     ".parquet, .csv, .csv.gz or .txt")


def _csv_parsing(invalid_row_handler: Callable) -> pcsv.ParseOptions:
    """Quoted values may span lines: without ``newlines_in_values`` pyarrow split blocks at any newline, so a CSV
    of multi-line values over one block (8 MiB) failed as "CSV parser got out of sync with chunker"."""
    return pcsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid_row_handler)


def _not_utf8(surrogate: str) -> str:
    """A lone surrogate as what it was: a byte kept by a decode with ``surrogateescape``, or JSON's "\ud800"."""
    code = ord(surrogate)
    return f"holds byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else "holds a lone surrogate"


def _json_row(line: bytes):
    """A JSONL line parsed, a byte that is not UTF-8 kept as a lone surrogate: in a field that is read, the row is
    refused as "invalid UTF-8" by ``_accept``; in one that is not, the row is read, as pyarrow's path reads it (a
    strict decode refused it only where another row sent its block down this path)."""
    return json_line(line.decode("utf-8", "surrogateescape"))


def _advance(rows: Iterator[int], count: int | None) -> None:
    """Take ``count`` rows from ``rows`` (all that are left where None), or as many as it has."""
    for _ in itertools.islice(rows, count):
        pass


def _lines(raw: IO[bytes]) -> Iterable[bytes]:
    """A text file's lines: split at \\n, or at \\r in a file of old Mac line ends (no \\n in its first 64 KiB),
    which read as one document (``files.text_lines`` does the same for topics, runs and qrels)."""
    head = raw.read(1 << 16)
    raw.seek(0)
    if b"\r" not in head or b"\n" in head:
        return raw
    lines = raw.read().split(b"\r")
    return lines[:-1] if lines and not lines[-1] else lines


def _bad_rows_of_batch(bad_rows: list, first: int, good: int) -> list:
    """The first of ``bad_rows`` (pyarrow's, in row order) that fall in a batch of ``good`` rows after row ``first``:
    pyarrow reads the next block ahead, and its handler has seen that block's bad rows already."""
    mine = 0
    while mine < len(bad_rows) and bad_rows[mine].number <= first + good + mine + 1:
        mine += 1
    return bad_rows[:mine]


class _StreamEnd:
    """A binary stream read through, keeping its last bytes and whether it has ended: a CSV value that runs to the
    end of the file can then be told in a gzip stream too, which cannot seek to its end."""

    KEEP = 1 << 16

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream, self.last_bytes, self.ended = stream, b"", False

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.ended = self.ended or not data or size is None or size < 0
        self.last_bytes = (self.last_bytes + data)[-self.KEEP:]
        return data

    @property
    def closed(self) -> bool:
        return self.stream.closed


def check_read_options(source: Path, fields: Sequence[str], id_field: str, on_error: str,
                       limit: int | None) -> list[str]:
    """The text fields to read (blank names dropped), once the checks that read nothing hold: a verb runs them before
    it says what it starts, so a bad flag is its only line."""
    if not source.exists():
        raise FileNotFoundError(f"corpus {source} does not exist")
    if not (source.is_file() or source.is_dir()):  # a pipe's second open waited for a writer forever
        raise ValueError(f"{source} is not a regular file (a pipe?); lsr reads a corpus more than once: "
                         "save it to a file first")
    if _holds_no_bytes(source):  # said after an empty progress bar (two, into a log file)
        raise ValueError(f"{source} is empty: it holds no documents")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    fields = [f.strip() for f in fields if f.strip()]
    if corpus_format(source) == "text" and (tuple(fields) != DEFAULT_FIELDS or id_field != DEFAULT_ID_FIELD):
        flag = "--fields" if tuple(fields) != DEFAULT_FIELDS else "--id-field"  # taken, and did nothing
        raise ValueError(f"{flag} names a column, and {source.name} is a text file: one document a line, "
                         "its id the line number")
    if not fields:
        raise ValueError("--fields must name at least one text field, e.g. title,text")
    if id_field in fields:
        raise ValueError(f"the id field {id_field!r} cannot also be a text field")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    return fields


def _holds_no_bytes(source: Path) -> bool:
    """Whether a file reads as nothing at all. Its size alone does not say: /proc's files report 0 and hold more."""
    if not source.is_file() or source.stat().st_size:
        return False
    try:
        with open(source, "rb") as fh:
            return fh.read(1) == b""
    except OSError:  # the read that follows says why, as the machine's error
        return False


class CorpusReader:
    """Iterate :class:`DocChunk` s over a corpus; ``stats`` tracks progress and skipped rows.

    ``fields`` are joined with one space (empty/missing fields are left out), the BEIR
    ``title + " " + text`` convention. ``limit`` stops after that many good documents.
    Left at their defaults, the id and text fields follow the corpus (``_adopt_columns``): a CSV of
    ``id,text`` or pyserini's ``{"id", "contents"}`` JSONL reads without flags.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        fields: Sequence[str] = DEFAULT_FIELDS,
        id_field: str = DEFAULT_ID_FIELD,
        on_error: str = "fail",
        limit: int | None = None,
        chunk_bytes: int = _BLOCK_BYTES,
    ) -> None:
        self.source = Path(source).expanduser()
        fields = check_read_options(self.source, fields, id_field, on_error, limit)
        self.fields = fields
        self.id_field = id_field
        self.on_error = on_error
        self.limit = limit
        self.chunk_bytes = chunk_bytes
        self.format = corpus_format(self.source)
        self.stats = ReadStats()
        self._seen: set[str] = set()
        if self.format in ("jsonl", "csv", "parquet"):
            try:
                columns = self._columns()
            except (OSError, EOFError, pa.ArrowException, UnicodeDecodeError) as exc:  # "Empty CSV file", "Parquet
                raise self._unreadable(exc) from None  # magic bytes not found", a header not UTF-8 (a gzip named .csv)
            fields_given = tuple(fields) != DEFAULT_FIELDS
            self._adopt_columns(list(columns), tables=self.format != "jsonl", id_given=id_field != DEFAULT_ID_FIELD,
                                fields_given=fields_given)
            if fields_given and self.format == "jsonl":  # a table's are checked as it is read (_check_columns)
                self._warn_lacking_fields(columns)
            elif not fields_given:
                self._warn_unread_fields(columns)

    def _columns(self) -> dict[str, bool]:
        """A table's columns, or the keys of a JSONL file's first JSON object (bad lines before it are named by the
        read), each with whether it may hold text: a string or empty column, a string or null JSON value."""
        if self.format == "parquet":
            return _text_columns(pq.ParquetFile(self.source).schema_arrow)
        if self.format == "csv":
            self._check_csv_header()
            return _text_columns(self._csv_schema())
        with open_maybe_gzip(self.source) as fh:
            for line in fh:
                try:
                    row = _json_row(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    return {name: value is None or isinstance(value, str) for name, value in row.items()}
        return {}

    def _check_csv_header(self) -> None:
        """The header row is UTF-8 before pyarrow reads it. pyarrow's names in another encoding failed to decode once
        its reader was closed, and the process, exiting at once, was killed by a read-ahead thread of pyarrow's that
        released the row handler without the GIL (SIGABRT, exit 134, 3 runs in 10 on a busy machine)."""
        with open_maybe_gzip(self.source) as fh:
            head = fh.readline(self.chunk_bytes)
        problem = None
        if head.startswith(b"\x1f\x8b"):
            problem = f"it is gzip-compressed; name it {self.source.name}.gz"
        elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            problem = 'it is UTF-16 text (a spreadsheet\'s "Unicode Text" export); save it as "CSV UTF-8"'
        else:
            try:
                head.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data":  # a character cut by the read's limit is no fault
                    problem = (f"its header row is not UTF-8 text (byte 0x{head[exc.start]:02X} at byte "
                               f'{exc.start + 1}); save it as "CSV UTF-8"')
        if problem is not None:
            raise self._unreadable(ValueError(problem))

    def _csv_schema(self) -> pa.Schema:
        """The CSV's columns with the types of its first block, read in blocks as large as the rows' (a first row
        over pyarrow's 1 MiB default failed) on this thread, by a reader closed at once, not left to the exit."""
        options = pcsv.ReadOptions(block_size=self.chunk_bytes, use_threads=False)
        try:
            with pcsv.open_csv(self.source, read_options=options,
                               parse_options=_csv_parsing(lambda row: "skip")) as reader:  # the read names a bad row
                return reader.schema
        except pa.ArrowInvalid as exc:
            if _STRADDLES in str(exc):
                raise self._straddling(1) from None
            raise

    def _straddling(self, row: int) -> ValueError:
        """pyarrow's "straddling object" error, which named no file: a quote that never closes, or a row that long
        (a 22 MB unquoted value was blamed on a quote)."""
        return ValueError(f"{self.source}: a row after row {row:,} runs over {self.chunk_bytes * 2 / (1 << 20):g} MiB: "
                          'a quote in it likely never closes (close it, or double a quote inside a value: ""), or '
                          "one of its values is that long, more than a CSV value may hold here (give such documents "
                          "as JSONL)")

    def _adopt_columns(self, names: Sequence[str], *, tables: bool, id_given: bool, fields_given: bool) -> None:
        """Where the id or text fields were left at their defaults and the corpus lacks them, take what it has:
        id, docid or doc_id for the id; pyserini's contents for the text; a table's title or text column alone.
        (A JSONL row may lack a title the next row has, so JSONL keeps both.)"""
        adopted = []
        if not id_given and self.id_field not in names:
            other = next((name for name in OTHER_ID_FIELDS if name in names), None)
            if other is not None:
                self.id_field = other
                adopted.append(f"ids from {other!r}")
        if not fields_given:
            present = [name for name in DEFAULT_FIELDS if name in names]
            if not present and OTHER_TEXT_FIELD in names:
                self.fields = [OTHER_TEXT_FIELD]
            elif present and tables:
                self.fields = present
            if self.fields != list(DEFAULT_FIELDS):
                adopted.append(f"text from {', '.join(map(repr, self.fields))}")
        if adopted:
            log.info("%s: reading %s (pass --id-field / --fields to choose)", self.source.name, " and ".join(adopted))

    def _warn_lacking_fields(self, columns: dict[str, bool]) -> None:
        """Fields given that the first JSON object lacks: `--fields title,txt` (a typo for text) indexed the titles
        alone, without a word. Only a warning: a later object may hold a field the first lacks."""
        lacking = [name for name in self.fields if name not in columns]
        if lacking:
            log.warning("%s has no field %s (it has %s) in its first document; a document without it is read without "
                        "it (--fields names the fields whose text is read)", self.source.name,
                        ", ".join(map(repr, lacking)), ", ".join(map(repr, columns)))

    def _warn_unread_fields(self, columns: dict[str, bool]) -> None:
        """The default fields found in part, beside other text fields: a corpus of title and abstract was indexed by
        its titles alone, silently. Say so, even under --quiet, with the --fields that reads them."""
        read = [name for name in DEFAULT_FIELDS if name in columns]
        missing = [name for name in DEFAULT_FIELDS if name not in columns]
        ids = {self.id_field, DEFAULT_ID_FIELD, *OTHER_ID_FIELDS}
        unread = [name for name, text in columns.items() if text and name not in ids and name not in self.fields]
        if read and missing and unread:
            log.warning("%s has no %s field: reading %s only; its other fields %s are not indexed (pass --fields %s "
                        "to index them)", self.source.name, " or ".join(map(repr, missing)),
                        ", ".join(map(repr, read)), ", ".join(map(repr, unread)), ",".join(read + unread))

    # ------------------------------------------------------------------ public
    def __iter__(self) -> Iterator[DocChunk]:
        """Chunks of good documents; under ``on_error="fail"`` the good rows before a bad one come first, then the error."""
        self.stats = ReadStats()
        self._seen = set()
        raw = {"beir": self._beir_chunks, "jsonl": self._jsonl_file_chunks, "parquet": self._parquet_chunks,
               "csv": self._csv_chunks, "text": self._text_chunks}[self.format]()
        try:
            for chunk in raw:
                chunk = self._within_limit(chunk)
                if chunk is None:
                    return
                if len(chunk):
                    yield chunk
        except BadRowError as error:
            before = self._within_limit(error.good_before)
            if before:
                yield before  # so they are encoded and checkpointed: a fixed corpus resumes after them
            raise
        except (OSError, EOFError, pa.ArrowException, UnicodeDecodeError) as exc:  # a damaged or truncated archive
            raise self._unreadable(exc) from None  # or Parquet, a disk error, pyarrow's CSV errors: none named the file

    def _unreadable(self, exc: BaseException) -> ValueError | OSError:
        """One line naming the source: an OSError the system raised (permission denied, an I/O error) stays one, the
        machine's (exit 1); the rest (pyarrow's, gzip's and zip's words about the bytes) mean a damaged file (exit 2)."""
        if isinstance(exc, OSError) and exc.errno in _MACHINE_ERRNOS:
            return OSError(f"cannot read {self.source}: {exc.strerror or exc}")
        words = " ".join(str(exc).split())  # pyarrow's end in a newline: the hint went onto a line of its own
        return ValueError(f"cannot read {self.source}: {words} (a damaged, truncated or mislabelled file?)")

    def _within_limit(self, chunk: DocChunk) -> DocChunk | None:
        """The part of ``chunk`` within ``limit`` (counted into stats), or None once the limit is reached."""
        if self.limit is not None:
            room = self.limit - self.stats.docs
            if room <= 0:
                return None
            chunk = chunk.slice(0, room)
        self.stats.docs += len(chunk)
        if chunk.vectors is None:
            blank = [doc_id for doc_id, text in zip(chunk.ids, chunk.texts) if is_blank(text)]
            self.stats.blank += len(blank)
            self.stats.first_blank = self.stats.first_blank or (blank[0] if blank else None)
        return chunk

    def expected_rows(self) -> int | None:
        """Rows the source holds, counted cheaply up front for a progress total; None when that is not cheap.

        Parquet knows its row count; uncompressed text (and a BEIR corpus up to a few hundred MB)
        is counted by its newlines, which runs at disk speed. Gzipped files are estimated as they stream instead.
        """
        if self.format == "parquet":
            return pq.ParquetFile(self.source).metadata.num_rows
        if self.format == "beir":
            src = BeirSource(self.source)
            if src.size("corpus.jsonl") > _COUNT_MAX_BYTES // 8:
                return None
            try:
                with src.open("corpus.jsonl") as fh:
                    return _count_lines(fh)
            except (OSError, EOFError) as exc:  # a cut-off archive: before the reading would find it
                raise self._unreadable(exc) from None
        if self.source.name.lower().endswith(".gz") or self.source.stat().st_size > _COUNT_MAX_BYTES:
            return None
        with open(self.source, "rb") as fh:
            return _count_lines(fh) - (1 if self.format == "csv" else 0)

    def unit(self) -> str:
        """What a row number means in messages: ``line`` for JSONL and text; ``row`` for Parquet and CSV, whose rows
        are numbered as a spreadsheet shows them, the header being row 1 (a quoted value may span lines, so a CSV row
        is not a line)."""
        return "row" if self.format in ("parquet", "csv") else "line"

    # ------------------------------------------------------------------ validation
    def _bad(self, reason: str, where: int, detail: str, good_before: DocChunk) -> None:
        """Count a bad row, or (``fail``) raise naming it, carrying the chunk's good rows before it. A row after the
        ``limit``'th good document is no row of this run: neither (it failed the run, then it was counted as skipped)."""
        if self.limit is not None and self.stats.docs + len(good_before) >= self.limit:
            return
        if self.on_error == "fail":
            error = BadRowError(
                f"{self.source} {self.unit()} {where}: {detail}. Fix the row, or pass --on-error skip to skip and count bad rows"
            )
            error.good_before = good_before
            raise error
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1

    def _accept(self, row_no: int, doc_id, values: Sequence, out: DocChunk, keys: Callable[[], list] | None = None) -> None:
        """Validate one row and append it to ``out``, or report it as bad; ``keys()`` lists a JSON row's fields."""
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            said = "missing" if doc_id is None else "empty"  # "missing" for an "_id": "" row sent one looking for a typo
            return self._bad("missing id", row_no, f"{said} id field {self.id_field!r}", out)
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            return self._bad("missing id", row_no,
                             f"id field {self.id_field!r} is {type(doc_id).__name__}, expected a string", out)
        if all(value is None for value in values):
            named = keys() if keys is not None else self.fields  # a table has every column read: they were checked
            if all(field in named for field in self.fields):  # "title": null, "text": null; or empty table cells
                empty = " or empty" if keys is None else ""  # not "none ... is present; choose them with --fields"
                return self._bad("missing text", row_no, f"the text fields {self.fields} are all null{empty}", out)
            if any(field in named for field in self.fields):  # "text": null, no "title"
                null = [field for field in self.fields if field in named]
                return self._bad("missing text", row_no, f"the text field{'s' if len(null) > 1 else ''} {null} "
                                 f"{'are' if len(null) > 1 else 'is'} null and the others of {self.fields} absent", out)
            return self._bad("missing text", row_no,
                             f"none of the text fields {self.fields} is present (the row has {named}); choose them "
                             "with --fields", out)
        doc_id = str(doc_id)
        problem = id_problem(doc_id)
        if problem is not None:
            return self._bad("bad id", row_no, f"id {short_repr(doc_id)} {problem}", out)
        parts = []
        for name, value in zip(self.fields, values):
            if value is None:
                continue
            if not isinstance(value, str):
                return self._bad("non-string text", row_no,
                                 f"field {name!r} is {type(value).__name__}, expected a string", out)
            at = surrogate_at(value)
            if at is not None:  # JSON's "\ud800": the encoder failed on it, naming neither file nor line
                return self._bad("invalid UTF-8", row_no, f"field {name!r} {_not_utf8(value[at])} at character {at}, "
                                 "not UTF-8 text (a byte of another encoding, such as Latin-1, reads as one)", out)
            if value:
                parts.append(value)
        if doc_id in self._seen:
            return self._bad("duplicate id", row_no, f"duplicate id {doc_id!r}", out)
        self._seen.add(doc_id)
        out.ids.append(doc_id)
        out.texts.append(" ".join(parts).strip())
        out.rows.append(row_no)

    # ------------------------------------------------------------------ JSONL
    def _jsonl_file_chunks(self) -> Iterator[DocChunk]:
        compression = "gzip" if self.source.name.lower().endswith(".gz") else None
        self.stats.bytes_total = self.source.stat().st_size
        with open(self.source, "rb") as raw:
            stream = pa.input_stream(raw, compression=compression) if compression else raw
            yield from self._jsonl_chunks(stream, lambda: raw.tell())

    def _beir_chunks(self) -> Iterator[DocChunk]:
        src = BeirSource(self.source)
        self.stats.bytes_total = src.size("corpus.jsonl")
        with src.open("corpus.jsonl") as fh:
            yield from self._jsonl_chunks(fh, None)

    def _jsonl_chunks(self, stream: IO[bytes], position) -> Iterator[DocChunk]:
        """Read whole-line blocks; parse each block with pyarrow, falling back to line-by-line on error."""
        schema = pa.schema([(self.id_field, pa.string())] + [(f, pa.string()) for f in self.fields])
        options = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        carry, line_no, consumed = b"", 0, 0
        while True:
            block = stream.read(self.chunk_bytes)
            if block:
                block = carry + block
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    carry = block
                    continue
                block, carry = block[:cut], block[cut:]
            else:
                block, carry = carry, b""
                if not block:
                    return
            consumed += len(block)
            lines = block.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            numbers = [line_no + 1 + i for i, line in enumerate(lines) if line.strip()]
            kept = [line for line in lines if line.strip()]
            line_no += len(lines)
            chunk = self._parse_json_block(kept, numbers, options)
            self.stats.bytes_read = position() if position is not None else consumed
            yield chunk

    def _parse_json_block(self, lines: list[bytes], numbers: list[int], options) -> DocChunk:
        out = DocChunk([], [], [])
        if not lines:
            return out
        try:
            table = pjson.read_json(io.BytesIO(b"\n".join(lines) + b"\n"), parse_options=options,
                                    read_options=pjson.ReadOptions(block_size=max(1 << 20, sum(map(len, lines)) + 1)))
        except pa.ArrowInvalid:
            table = None
        columns = None
        if table is not None and table.num_rows == len(lines):
            try:
                columns = [table.column(c).to_pylist() for c in [self.id_field, *self.fields]]
            except UnicodeDecodeError:  # Arrow keeps invalid UTF-8 in strings: the lines below name the row
                columns = None
        if columns is not None:
            for i, row_no in enumerate(numbers):
                self._accept(row_no, columns[0][i], [col[i] for col in columns[1:]], out,
                             keys=lambda line=lines[i]: list(_json_row(line)))
            return out
        for line, row_no in zip(lines, numbers):
            try:
                row = _json_row(line)
            except json.JSONDecodeError as exc:
                self._bad("invalid JSON", row_no, invalid_json(exc), out)
                continue
            if not isinstance(row, dict):
                self._bad("invalid JSON", row_no, f"expected a JSON object, got {type(row).__name__}", out)
                continue
            self._accept(row_no, row.get(self.id_field), [row.get(f) for f in self.fields], out, keys=lambda row=row: list(row))
        return out

    # ------------------------------------------------------------------ Parquet / CSV
    def _check_columns(self, names: Sequence[str]) -> None:
        missing = [c for c in [self.id_field, *self.fields] if c not in names]
        if missing:
            raise ValueError(
                f"{self.source} has no column(s) {missing}; it has {list(names)}. Choose them with --id-field / --fields"
            )

    def _parquet_chunks(self) -> Iterator[DocChunk]:
        pf = pq.ParquetFile(self.source)
        self._check_columns(pf.schema_arrow.names)
        self.stats.bytes_total = pf.metadata.num_rows
        row_no = 0
        for batch in parquet_batches(pf, _PARQUET_ROWS, [self.id_field, *self.fields]):
            yield self._table_chunk(batch, row_no)
            row_no += batch.num_rows
            self.stats.bytes_read = row_no  # rows stand in for bytes: both are only used as a fraction

    def _csv_chunks(self) -> Iterator[DocChunk]:
        columns = [self.id_field, *self.fields]
        header = self._csv_schema().names  # read once: the columns, and a name given twice
        names = list(dict.fromkeys(header))
        self._check_columns(names)
        twice = next((name for name in columns if header.count(name) > 1), None)
        if twice is not None:  # pyarrow read the first and left the others out, without a word
            raise ValueError(f"{self.source}: the header names the column {twice!r} {header.count(twice)} times, so "
                             "which one to read is unclear; rename the others")
        last_column = names[-1] if names and names[-1] in columns else None
        self.stats.bytes_total = self.source.stat().st_size
        convert = pcsv.ConvertOptions(column_types={c: pa.binary() for c in columns}, include_columns=columns,
                                      strings_can_be_null=True, quoted_strings_can_be_null=False,
                                      null_values=[""])  # not pyarrow's NA, null, N/A, nan...: ids and words here
        with open(self.source, "rb") as raw:
            compression = "gzip" if self.source.name.lower().endswith(".gz") else None
            stream = _StreamEnd(pa.input_stream(raw, compression=compression) if compression else raw)
            bad_rows: list = []
            try:  # single-threaded, so pyarrow numbers a row with the wrong number of columns
                reader = pcsv.open_csv(stream, read_options=pcsv.ReadOptions(block_size=self.chunk_bytes, use_threads=False),
                                       parse_options=_csv_parsing(self._csv_row_handler(bad_rows)),
                                       convert_options=convert)
                line_no = 1  # the header; the first data row is row 2 (pyarrow's numbers, which count rows, not lines)
                quoting = strict_rows(self.source, unclosed_named_here=last_column is not None)
                _advance(quoting, 1)
                for batch in reader:
                    mine = _bad_rows_of_batch(bad_rows, line_no, batch.num_rows)
                    _advance(quoting, batch.num_rows + len(mine))  # the batch's rows, before they are indexed
                    chunk = self._table_chunk(batch, line_no, [row.number for row in mine])
                    self._count_skipped_rows(mine, chunk)
                    yield self._without_unclosed_quote(batch, chunk, last_column, stream)
                    line_no += batch.num_rows + len(mine)
                    del bad_rows[:len(mine)]
                    self.stats.bytes_read = raw.tell()
                _advance(quoting, None)  # the rows it lags by (blank lines, which pyarrow skips)
            except pa.ArrowInvalid as exc:
                if _STRADDLES in str(exc):  # one row over two blocks
                    raise self._straddling(line_no) from None
                if not bad_rows:
                    raise
                row = bad_rows[0]
                self._bad("wrong column count", row.number, f"{row.actual_columns} columns where the header has "
                          f"{row.expected_columns} ({row.text[:80]!r}; quote a value that holds a comma)", DocChunk([], [], []))

    def _without_unclosed_quote(self, batch: pa.RecordBatch, chunk: DocChunk, last_column: str | None,
                                stream: _StreamEnd) -> DocChunk:
        """``chunk`` less a last row whose last field opens a quote that never closes: CSV values may hold newlines,
        so that field took every line after it to the end of the file, and those rows were indexed as one document
        without a word. Such a field ends where the file (plain or gunzipped) ends, and the file does not end in a
        quote; checked for a last field read as a text or id."""
        if last_column is None or not len(chunk) or not stream.ended:
            return chunk
        column = batch.column(batch.schema.get_field_index(last_column))
        value = _utf8_values(column.slice(len(column) - 1))[0]
        if not value or "\n" not in value or (value != chunk.ids[-1] and value.strip() not in chunk.texts[-1]):
            return chunk  # no newline, or the batch's last row was not the chunk's (a bad row, skipped)
        # the value's end as the file holds it: after its last quote, which the file doubles
        tail = value.rsplit('"', 1)[-1].encode("utf-8", "surrogateescape").rstrip(b"\r\n")[-_StreamEnd.KEEP // 2:]
        end = stream.last_bytes.rstrip(b"\r\n")
        if not end.endswith(tail) or end.endswith(b'"'):
            return chunk
        lines = value.rstrip("\r\n").count("\n") + 1
        self._bad("unclosed quote", chunk.rows[-1], f"a quote opens in its {last_column!r} value and never closes, so "
                  f"that value ran to the end of the file ({lines:,} line{'s' * (lines != 1)}, rows after it "
                  'included); close the quote, or double a quote inside a value ("")', chunk.slice(0, len(chunk) - 1))
        return chunk.slice(0, len(chunk) - 1)

    def _csv_row_handler(self, bad_rows: list) -> Callable:
        """pyarrow's handler for a row with the wrong number of columns: skip it (counted with its batch), or stop."""
        def handle(row) -> str:
            bad_rows.append(row)
            return "error" if self.on_error == "fail" else "skip"
        return handle

    def _count_skipped_rows(self, bad_rows: list, chunk: DocChunk) -> None:
        """Count the skipped rows of a batch that come before the ``limit``'th good document (the rest are no rows
        of this run)."""
        room = None if self.limit is None else self.limit - self.stats.docs
        last = chunk.rows[room - 1] if room is not None and 0 < room <= len(chunk) else None
        within = [row for row in bad_rows if (room is None or room > 0) and (last is None or row.number < last)]
        if within:
            self.stats.skipped["wrong column count"] = self.stats.skipped.get("wrong column count", 0) + len(within)

    def _text_chunks(self) -> Iterator[DocChunk]:
        self.stats.bytes_total = self.source.stat().st_size
        with open(self.source, "rb") as raw:
            out = DocChunk([], [], [])
            for line_no, line in enumerate(_lines(raw), start=1):
                try:
                    text = line.decode("utf-8-sig" if line_no == 1 else "utf-8").strip()  # a BOM is no text
                except UnicodeDecodeError as exc:
                    self._bad("invalid UTF-8", line_no, f"invalid UTF-8 ({exc.reason})", out)
                    continue
                if text:
                    out.ids.append(str(line_no))
                    out.texts.append(text)
                    out.rows.append(line_no)
                else:
                    self.stats.blank_lines += 1
                if len(out) == _PARQUET_ROWS:
                    self.stats.bytes_read = raw.tell()
                    yield out
                    out = DocChunk([], [], [])
            self.stats.bytes_read = raw.tell()
            yield out

    def _table_chunk(self, batch: pa.RecordBatch | pa.Table, first: int, skipped: Iterable[int] = ()) -> DocChunk:
        """The batch's good rows; its rows are numbered from ``first + 1``, past the ``skipped`` numbers (a CSV's
        rows with the wrong column count, which pyarrow left out of the batch wherever they fell)."""
        numbers, gaps, number = [], set(skipped), first
        while len(numbers) < batch.num_rows:
            number += 1
            if number not in gaps:
                numbers.append(number)
        out = DocChunk([], [], [])
        columns = []
        for name in [self.id_field, *self.fields]:
            col = batch.column(batch.schema.get_field_index(name))
            if pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
                col = col.cast(pa.string())
            columns.append(_utf8_values(col) if pa.types.is_binary(col.type) else col.to_pylist())
        for i, number in enumerate(numbers):
            self._accept(number, columns[0][i], [col[i] for col in columns[1:]], out)
        return out


def _utf8_values(col: pa.Array) -> list:
    """A CSV column, read as bytes, as text. Read as text, one value that was not UTF-8 (a Latin-1 byte from a
    spreadsheet) made the whole file unreadable, --on-error skip or not; the byte now makes a lone surrogate, which
    makes its row a bad one, named."""
    try:
        return col.cast(pa.string()).to_pylist()
    except pa.ArrowInvalid:
        return [None if value is None else value.decode("utf-8", "surrogateescape") for value in col.to_pylist()]


def _text_columns(schema: pa.Schema) -> dict[str, bool]:
    """Each column's name and whether it may hold text: a string column, or one pyarrow found empty."""
    return {f.name: pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_string_view(f.type)
            or pa.types.is_null(f.type) for f in schema}


def parquet_batches(pf: pq.ParquetFile, rows: int, columns: list[str]) -> Iterator[pa.Table]:
    """``pf``'s rows, about ``rows`` at a time, read one row group after another: pyarrow's ``iter_batches`` over
    the whole file kept all it had read allocated until the file ended (apache/arrow#39808; a 200,000-document
    vectors file held 590 MB, MS MARCO's would hold its size), where each row group's own reader frees it. Small
    row groups (``lsr encode`` writes one per batch) are joined up to ``rows``."""
    pending, held = [], 0
    for group in range(pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=rows, row_groups=[group], columns=columns):
            pending.append(batch)
            held += batch.num_rows
            if held >= rows:
                yield pa.Table.from_batches(pending).combine_chunks()
                pending, held = [], 0
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks()


def _count_lines(fh: IO[bytes]) -> int:
    """Non-empty lines (a last line without a newline counts; blank lines mostly do not)."""
    lines, last = 0, b"\n"
    for block in iter(lambda: fh.read(_BLOCK_BYTES), b""):
        lines += block.count(b"\n") - block.count(b"\n\n")
        last = block[-1:]
    return lines + (last != b"\n")


class CorpusHash:
    """A running checksum of (id, text) pairs, resumable from its hex digest.

    Each document folds into the previous digest, so the value depends only on the documents
    and their order (not on chunking), and the state after N documents is 32 bytes that a
    checkpoint stores and a resumed run verifies against the same prefix of the source.
    """

    def __init__(self, digest: str | None = None) -> None:
        self.hexdigest = digest or hashlib.sha256(b"lsr-corpus-v1").hexdigest()

    def update(self, ids: Sequence[str], texts: Sequence[str]) -> str:
        state = bytes.fromhex(self.hexdigest)
        for doc_id, text in zip(ids, texts):
            state = hashlib.sha256(state + doc_id.encode("utf-8") + b"\x00" + text.encode("utf-8")).digest()
        self.hexdigest = state.hex()
        return self.hexdigest
