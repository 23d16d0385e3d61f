"""A CSV's quoting checked row by row beside pyarrow's read, which takes text after a value's closing quote into
the value (``"she said" ok``). Where such a quote was meant inside the value, the value had opened at an earlier
quote and took every line up to this one, rows included, as one document, without a word. Python's strict CSV
reader stops at that line; ``CorpusReader`` advances it by the rows of each block before passing the block on."""

from __future__ import annotations

import csv
import io
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lsr.files import open_maybe_gzip

_TEXT_AFTER_QUOTE = "expected after '\"'"  # the words of Python's strict reader for text after a closing quote
_UNCLOSED = "unexpected end of data"  # ... and for a quoted value the file ends in


def strict_rows(source: Path, unclosed_named_here: bool = False) -> Iterator[int]:
    """Yield once per row of ``source`` (blank lines included), raising ValueError at text after a closing quote,
    and at a quote open to the end of the file unless ``unclosed_named_here`` (the caller names it when the value
    is one it reads: pyarrow takes such a value, and every row after it, without a word). Other faults are
    pyarrow's to name: a wrong column count, NUL bytes."""
    with _unlimited_fields(), io.TextIOWrapper(open_maybe_gzip(source), "utf-8", "surrogateescape", newline="") as fh:
        reader = csv.reader(fh, strict=True)  # pyarrow's dialect: comma, '"', a doubled quote inside a quoted value
        start = 1
        while True:
            try:
                next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if _UNCLOSED in str(exc) and not unclosed_named_here:
                    raise ValueError(
                        f"{source} line {start}: a quote opens in the row from that line and never closes, so its "
                        f"value ran to the end of the file ({reader.line_num - start + 1:,} lines, rows after it "
                        "included); close the quote, or double a quote inside a value (\"\")") from None
                if _TEXT_AFTER_QUOTE not in str(exc):
                    return
                raise ValueError(
                    f"{source} line {reader.line_num}: text follows the quote that closes a value (in the row from "
                    f"line {start}); a quote inside a value is doubled (\"\") and that value quoted, else it closes "
                    "the value and the rows up to it are read as one value") from None
            start = reader.line_num + 1
            yield start


@contextmanager
def _unlimited_fields() -> Iterator[None]:
    """Python's reader refuses a value over 128 KiB, which pyarrow reads (one document's text)."""
    limit = csv.field_size_limit(sys.maxsize)
    try:
        yield
    finally:
        csv.field_size_limit(limit)
