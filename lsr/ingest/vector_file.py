"""A standalone vectors file: ``lsr encode --input FILE --output vectors.parquet`` writes it, ``lsr index --pre-encoded`` reads it.

One row per document: ``id``, ``text``, ``indices: list<int32>``, ``values: list<float32>``, ``truncated: bool``
(cut at the document length). The schema metadata names the model and its document length, so the index built from
the file searches with the same model; what a model folder held when it encoded the file (its content key), so a
search warns once the folder has changed since; and the device and dtype it was encoded on, which the collection
records. The vocabulary is not repeated in the file (the model has it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from lsr.encode.inputs import dtype_name
from lsr.encode.models import document_length, lasting_name, model_content_key
from lsr.files import check_parquet_seal, seal_parquet, write_output
from lsr.ingest.corpus import BadRowError, CorpusReader, DocChunk, parquet_batches
from lsr.ingest.progress import progress_bar, quiet_logger, update_total
from lsr.sparse import VOCAB_SIZE_KEY, SparseBatch

MODEL_KEY = b"lsr.model"
MAX_LENGTH_KEY = b"lsr.max_length"
ENCODED_WITH_KEY = b"lsr.encoded_with"  # {"device", "dtype"} as JSON
MODEL_CONTENT_KEY = b"lsr.model_content"  # models.model_content_key of the model; absent where that is None
_COLUMNS = ("id", "indices", "values")
_ROWS = 8192  # rows read at a time


@dataclass
class EncodeSummary:
    docs: int
    skipped: dict[str, int] = field(default_factory=dict)
    blank_lines: int = 0  # a .txt input's lines without text
    truncated: int = 0
    postings: int = 0
    kept_tokens: int = 0  # of a document's: --max-length, or what a decoder's echo leaves of it


def encode_file(source: str | Path, output: str | Path, *, model: str = "splade-tiny", fields: Sequence[str] = ("title", "text"),
                id_field: str = "_id", on_error: str = "fail", batch_size: int = 32, max_length: int | None = None,
                device: str = "auto", dtype: str = "auto", progress: bool = True) -> EncodeSummary:
    """Encode every document of a corpus (any format ``lsr index`` reads) into one vectors file, atomically;
    ``max_length`` None: ``document_length`` of the model."""
    from lsr.encode.splade import SpladeEncoder

    max_length = document_length(model) if max_length is None else max_length  # 0 is refused, not the default
    output = Path(output).expanduser()
    if output.suffix != ".parquet":  # before the corpus is opened: a wrong flag is told at once
        raise ValueError(f"--output must be a .parquet file, got {output}")
    reader = CorpusReader(source, fields=fields, id_field=id_field, on_error=on_error)
    expected = reader.expected_rows()  # opens the corpus: a folder that is no BEIR dataset is told before the model loads
    encoder = SpladeEncoder.from_pretrained(model, max_length=max_length, query_max_length=max_length, device=device,
                                            dtype=dtype)  # documents only: a GPU warms up no longer length
    summary = EncodeSummary(0, kept_tokens=encoder.document_tokens)
    encoded_with = json.dumps({"device": str(encoder.device), "dtype": dtype_name(encoder.weight.dtype)})
    content = model_content_key(model)
    file_metadata = {MODEL_KEY: lasting_name(model).encode(), MAX_LENGTH_KEY: str(max_length).encode(),
                     ENCODED_WITH_KEY: encoded_with.encode()}
    if content is not None:
        file_metadata[MODEL_CONTENT_KEY] = content.encode()

    def write(fh) -> None:
        writer = None
        try:
            with progress_bar("encode", expected, enabled=progress) as bar, quiet_logger("lsr.encode.splade"):
                for chunk in reader:
                    for start in range(0, len(chunk), batch_size * 2):
                        part = chunk.slice(start, start + batch_size * 2)
                        vectors, info = encoder.encode_documents(part.texts, batch_size=batch_size, return_info=True)
                        table = vectors.to_arrow(part.ids).append_column("text", pa.array(part.texts, pa.string()))
                        table = table.append_column("truncated", pa.array(info.truncated.tolist(), pa.bool_()))
                        table = table.replace_schema_metadata({**table.schema.metadata, **file_metadata})
                        writer = writer or pq.ParquetWriter(fh, table.schema, compression="zstd",
                                                               write_page_checksum=True)
                        writer.write_table(table)
                        summary.docs += len(part)
                        summary.truncated += int(info.truncated.sum())
                        summary.postings += vectors.nnz
                        bar.update(len(part))
                        update_total(bar, reader, expected, None)
            if writer is not None:
                seal_parquet(writer, fh)
        finally:  # also on an error or Ctrl-C: a writer left open printed a traceback when collected, after the file shut
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{source} has no documents to encode")

    write_output(output, write)
    summary.skipped = dict(reader.stats.skipped)
    summary.blank_lines = reader.stats.blank_lines
    return summary


class VectorFileReader(CorpusReader):
    """The rows of a vectors file as :class:`DocChunk` s carrying their ``vectors``; ids are checked like a corpus's."""

    def __init__(self, source: str | Path, *, on_error: str = "fail", limit: int | None = None) -> None:
        super().__init__(source, fields=("text",), id_field="id", on_error=on_error, limit=limit)
        if self.format != "parquet":
            raise ValueError(f"--pre-encoded reads a .parquet vectors file (made by `lsr encode --output`), got {source}")
        schema = pq.read_schema(self.source)
        check_parquet_seal(self.source)
        missing = [c for c in _COLUMNS if c not in schema.names]
        if missing:
            raise ValueError(f"{source} is not a vectors file: it has no column(s) {missing} (it has {schema.names})")
        for name, holds, what in (("indices", pa.types.is_integer, "integers"), ("values", pa.types.is_floating, "numbers")):
            kind = schema.field(name).type
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not holds(kind.value_type):
                raise ValueError(f"{source} is not a vectors file: its column {name!r} holds {kind}, not lists of {what}")
        self.metadata = schema.metadata or {}
        for key in (MAX_LENGTH_KEY, VOCAB_SIZE_KEY):
            if key in self.metadata and not self.metadata[key].isdigit():
                raise ValueError(f"{source}: its {key.decode()} is {self.metadata[key]!r}, not a whole number "
                                 "(a damaged vectors file?)")
        self.has_text = "text" in schema.names
        self.has_truncated = "truncated" in schema.names and pa.types.is_boolean(schema.field("truncated").type)

    @property
    def model(self) -> str | None:
        """The model that encoded the vectors, if the file says."""
        return self.metadata[MODEL_KEY].decode() if MODEL_KEY in self.metadata else None

    @property
    def model_content(self) -> str | None:
        """What the model folder held when it encoded the vectors (``model_content_key``), if the file says: files
        of bundled or hub models, and of older versions, do not."""
        found = self.metadata.get(MODEL_CONTENT_KEY, b"").decode("ascii", "replace")
        return found if len(found) == 64 and all(c in "0123456789abcdef" for c in found) else None

    @property
    def encoded_with(self) -> dict[str, str] | None:
        """The device and dtype that encoded the vectors, if the file says (files of older versions do not)."""
        try:
            found = json.loads(self.metadata[ENCODED_WITH_KEY])
        except (KeyError, ValueError):
            return None
        return found if isinstance(found, dict) and {"device", "dtype"} <= set(found) else None

    @property
    def max_length(self) -> int | None:
        return int(self.metadata[MAX_LENGTH_KEY]) if MAX_LENGTH_KEY in self.metadata else None

    def _parquet_chunks(self) -> Iterator[DocChunk]:
        pf = pq.ParquetFile(self.source, page_checksum_verification=True)  # a flipped bit was indexed unsaid
        self.stats.bytes_total = pf.metadata.num_rows
        columns = [*_COLUMNS, *(["text"] if self.has_text else []), *(["truncated"] if self.has_truncated else [])]
        first = 0
        for batch in parquet_batches(pf, _ROWS, columns):
            table = batch.replace_schema_metadata(self.metadata)
            if not self.has_text:
                table = table.append_column("text", pa.array([""] * table.num_rows, pa.string()))
            try:
                vectors = SparseBatch.from_arrow(table, first_row=first)
            except ValueError as exc:
                raise ValueError(f"{self.source}: {exc}") from None
            flags = table.column("truncated").to_pylist() if self.has_truncated else None
            try:
                chunk = self._table_chunk(table, first)
            except BadRowError as error:  # the good rows before the bad one go on, with their vectors
                _attach(error.good_before, vectors, flags, first)
                raise
            _attach(chunk, vectors, flags, first)
            first += table.num_rows
            self.stats.bytes_read = first
            yield chunk


def _attach(chunk: DocChunk, vectors: SparseBatch, flags: list | None, first: int) -> None:
    """Give the chunk its rows' vectors and truncation flags (rows are 1-based, ``first`` rows before the table)."""
    positions = [row - first - 1 for row in chunk.rows]
    chunk.vectors = vectors.select(positions)
    chunk.truncated = None if flags is None else [bool(flags[p]) for p in positions]
