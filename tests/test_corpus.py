"""Corpus readers: every supported format gives the same documents; bad rows are named or skipped."""

from __future__ import annotations

import gzip
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from lsr.ingest.corpus import BadRowError, CorpusHash, CorpusReader
from lsr.sparse import check_ids

ROWS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin lowers the risk of heart attack.", "metadata": {"year": 2001}},
    {"_id": "d2", "title": "", "text": "Vitamin D, calcium and \"bone\" health."},
    {"_id": "d3", "title": "Sleep", "text": "Naps improve memory consolidation.\nSecond line."},
    {"_id": "4", "title": "Ünïcode", "text": "Café au lait spots — neurofibromatosis."},
]
EXPECTED_IDS = ["d1", "d2", "d3", "4"]
EXPECTED_TEXTS = [
    "Aspirin Aspirin lowers the risk of heart attack.",
    "Vitamin D, calcium and \"bone\" health.",
    "Sleep Naps improve memory consolidation.\nSecond line.",
    "Ünïcode Café au lait spots — neurofibromatosis.",
]


def read_all(reader: CorpusReader) -> tuple[list[str], list[str], list[int]]:
    ids, texts, rows = [], [], []
    for chunk in reader:
        ids += chunk.ids
        texts += chunk.texts
        rows += chunk.rows
    return ids, texts, rows


def write_jsonl(path: Path, lines: list[str]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def beir_folder(root: Path) -> Path:
    folder = root / "mini"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [json.dumps(r) for r in ROWS])
    write_jsonl(folder / "queries.jsonl", [json.dumps({"_id": "q1", "text": "aspirin heart"})])
    (folder / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n")
    return folder


def sources(tmp_path: Path) -> dict[str, Path]:
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "metadata"} for r in ROWS])
    out = {
        "jsonl": write_jsonl(tmp_path / "c.jsonl", [json.dumps(r, ensure_ascii=False) for r in ROWS]),
        "jsonl.gz": write_jsonl(tmp_path / "c.jsonl.gz", [json.dumps(r) for r in ROWS]),
        "parquet": tmp_path / "c.parquet",
        "csv": tmp_path / "c.csv",
        "beir-dir": beir_folder(tmp_path),
        "beir-zip": tmp_path / "mini.zip",
        "beir-tar": tmp_path / "mini.tar.gz",
    }
    pq.write_table(table, out["parquet"])
    pcsv.write_csv(table, out["csv"])
    with zipfile.ZipFile(out["beir-zip"], "w") as zf:
        for f in sorted(out["beir-dir"].rglob("*")):
            zf.write(f, f.relative_to(tmp_path))
    with tarfile.open(out["beir-tar"], "w:gz") as tf:
        tf.add(out["beir-dir"], arcname="mini")
    return out


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet", "csv", "beir-dir", "beir-zip", "beir-tar"])
def test_every_format_reads_the_same_documents(tmp_path, kind):
    reader = CorpusReader(sources(tmp_path)[kind])
    ids, texts, _ = read_all(reader)
    assert ids == EXPECTED_IDS
    assert texts == EXPECTED_TEXTS
    assert reader.stats.docs == 4 and reader.stats.n_skipped == 0
    assert reader.stats.fraction == pytest.approx(1.0)


def test_fields_id_field_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [json.dumps({"doc": f"x{i}", "body": f"body {i}", "head": f"h{i}"})
                                              for i in range(10)])
    ids, texts, rows = read_all(CorpusReader(path, fields=["body", "head"], id_field="doc", limit=3))
    assert ids == ["x0", "x1", "x2"]
    assert texts == ["body 0 h0", "body 1 h1", "body 2 h2"]
    assert rows == [1, 2, 3]
    bad_later = write_jsonl(tmp_path / "bad-later.jsonl", [json.dumps({"_id": "a", "text": "x"}),
                                                            json.dumps({"_id": "b", "text": "y"}), json.dumps({"text": "no id"})])
    assert read_all(CorpusReader(bad_later, limit=2))[0] == ["a", "b"]  # line 3 is past the limit: it failed the run
    skipping = CorpusReader(bad_later, limit=2, on_error="skip")
    assert read_all(skipping)[0] == ["a", "b"] and skipping.stats.n_skipped == 0  # it was counted as skipped
    with pytest.raises(BadRowError, match="line 3: missing id"):
        read_all(CorpusReader(bad_later, limit=3))
    with pytest.raises(ValueError, match="no column"):
        read_all(CorpusReader(sources(tmp_path)["parquet"], id_field="doc"))


def test_left_at_their_defaults_the_fields_follow_the_corpus(tmp_path, caplog):
    """pyserini's JSONL ({"id", "contents"}) and a CSV of id,text read without flags; flags still decide."""
    pyserini = write_jsonl(tmp_path / "p.jsonl.gz", [json.dumps({"id": f"p{i}", "contents": f"text {i}"})
                                                     for i in range(3)])
    with caplog.at_level("INFO", logger="lsr.ingest.corpus"):
        reader = CorpusReader(pyserini)
    assert read_all(reader)[:2] == (["p0", "p1", "p2"], ["text 0", "text 1", "text 2"])
    assert (reader.id_field, reader.fields) == ("id", ["contents"])
    assert "p.jsonl.gz: reading ids from 'id' and text from 'contents'" in caplog.text
    (tmp_path / "c.csv").write_text("docid,text,url\n7,coffee and the liver,x\n8,statins,y\n", encoding="utf-8")
    assert read_all(CorpusReader(tmp_path / "c.csv"))[:2] == (["7", "8"], ["coffee and the liver", "statins"])
    pq.write_table(pa.table({"doc_id": ["a"], "title": ["Only a title"]}), tmp_path / "t.parquet")
    assert read_all(CorpusReader(tmp_path / "t.parquet"))[:2] == (["a"], ["Only a title"])
    # a JSONL row may lack the title the next one has: both stay
    mixed = write_jsonl(tmp_path / "m.jsonl", [json.dumps({"id": "a", "text": "x"}),
                                               json.dumps({"id": "b", "title": "T", "text": "y"})])
    assert read_all(CorpusReader(mixed))[:2] == (["a", "b"], ["x", "T y"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['body'\]"):
        read_all(CorpusReader(tmp_path / "c.csv", fields=["body"]))  # chosen fields are never swapped
    with pytest.raises(BadRowError, match="missing id field 'key'"):
        read_all(CorpusReader(pyserini, id_field="key"))


def test_a_damaged_or_truncated_archive_is_one_clear_error(tmp_path):
    (tmp_path / "c.jsonl.gz").write_bytes(b"not gzip at all")
    (tmp_path / "c.csv.gz").write_bytes(b"not gzip either")
    whole = gzip.compress("".join(json.dumps({"_id": str(i), "text": "x" * 200}) + "\n" for i in range(5000)).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # its first rows read, then it ends
    # pyarrow's own words named no file: "Empty CSV file", "Parquet magic bytes not found", "invalid UTF8 data"
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not a parquet file")
    (tmp_path / "gz.csv").write_bytes(gzip.compress(b"id,text\nd1,one\n"))  # a header not UTF-8 was a bare
    (tmp_path / "latin1.csv").write_bytes("id,r\u00e9sum\u00e9\nd1,one\n".encode("latin-1"))  # decoder message
    for name in ("c.jsonl.gz", "c.csv.gz", "cut.jsonl.gz", "bad.parquet", "gz.csv", "latin1.csv"):  # a Latin-1 byte
        # in a row is its row's error
        with pytest.raises(ValueError, match=f"cannot read {tmp_path / name}: .*damaged, truncated or mislabelled"):
            read_all(CorpusReader(tmp_path / name))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'empty.csv'} is empty: it holds no documents$"):
        CorpusReader(tmp_path / "empty.csv")


def test_a_cut_off_beir_archive_is_one_clear_error(beir_dir, tmp_path, capsys):
    """A .tar.gz is read through to list it: a cut one failed there, in an EOFError traceback."""
    from lsr.cli.main import main

    whole = (beir_dir / "scifact.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 3])
    assert main(["index", str(tmp_path / "cut.tar.gz"), str(tmp_path / "out")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the line saying what it starts to index
    assert last.startswith(f"lsr index: error: cannot read {tmp_path / 'cut.tar.gz'}: ") and "damaged" in last


def test_a_damaged_member_of_a_beir_zip_is_one_clear_error(tmp_path, capsys):
    """A bad CRC or a garbled deflate stream in corpus.jsonl was zipfile's or zlib's traceback, exit 1, from
    `lsr index` and from the BEIR loader `lsr train` and `lsr beir` read through."""
    from lsr.cli.main import main
    from lsr.eval.datasets import load_beir

    corpus = "".join(json.dumps({"_id": f"d{i}", "text": f"document number {i} " * 30}) + "\n" for i in range(300))
    damaged = {}
    for name, compression in (("badcrc", zipfile.ZIP_STORED), ("garbled", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(tmp_path / f"{name}.zip", "w", compression) as archive:
            archive.writestr("ds/corpus.jsonl", corpus)
            archive.writestr("ds/queries.jsonl", '{"_id": "q1", "text": "document"}\n')
            archive.writestr("ds/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
        data = bytearray((tmp_path / f"{name}.zip").read_bytes())
        start = data.find(b"document number 5 ") if name == "badcrc" else data.find(b"ds/corpus.jsonl") + 200
        for at in range(start, start + (1 if name == "badcrc" else 50)):
            data[at] ^= 0x20 if name == "badcrc" else 0xFF
        (tmp_path / f"{name}.zip").write_bytes(bytes(data))
        damaged[name] = tmp_path / f"{name}.zip"
    for name, path in damaged.items():
        message = f"cannot read {path}: .* \\(a damaged or truncated archive\\?\\)"
        with pytest.raises(ValueError, match=message):
            read_all(CorpusReader(path))
        with pytest.raises(ValueError, match=message):
            load_beir(path)
        assert main(["index", str(path), str(tmp_path / f"out-{name}"), "--dense", "none"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"lsr index: error: cannot read {path}: ")


def test_streams_in_bounded_blocks(tmp_path):
    """A block size far below the file size gives many chunks, identical to one big block."""
    lines = [json.dumps({"_id": str(i), "text": "word " * (i % 50)}) for i in range(3000)]
    path = write_jsonl(tmp_path / "big.jsonl", lines)
    small = CorpusReader(path, chunk_bytes=16 << 10)
    chunks = iter(small)
    first = next(chunks)
    assert small.stats.fraction < 0.2  # only a prefix was read to produce the first chunk
    rest = list(chunks)
    assert len(rest) > 10
    ids = first.ids + [i for c in rest for i in c.ids]
    assert ids == read_all(CorpusReader(path))[0] == [str(i) for i in range(3000)]


def test_a_parquet_corpus_is_read_in_memory_bounded_by_a_row_group(tmp_path, monkeypatch):
    """pyarrow's iter_batches over a whole file kept what it had read allocated until the file ended
    (apache/arrow#39808): a 200,000-document vectors file held 590 MB, and MS MARCO's would have held its size. Row
    groups are now read one after another; small ones (lsr encode writes one per batch) still join into blocks."""
    import numpy as np

    import lsr.ingest.corpus as corpus

    monkeypatch.setattr(corpus, "_PARQUET_ROWS", 500)  # blocks far smaller than the file
    words = np.array([f"w{i:05x}" for i in range(50_000)])
    rng = np.random.default_rng(0)
    texts = [" ".join(words[rng.integers(0, len(words), 150)]) for _ in range(20_000)]  # 20 MB that barely compress
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"_id": [str(i) for i in range(20_000)], "text": texts}), path, row_group_size=100)
    peak, ids = 0, []
    for chunk in CorpusReader(path):
        ids += chunk.ids
        peak = max(peak, pa.total_allocated_bytes())
    assert ids == [str(i) for i in range(20_000)]
    assert peak < 4 << 20, f"{peak / 2**20:.0f} MiB held by pyarrow"


BAD_LINES = [
    json.dumps({"_id": "a", "text": "fine"}),
    json.dumps({"title": "no id", "text": "x"}),           # line 2: missing id
    json.dumps({"_id": "a", "text": "again"}),            # line 3: duplicate id
    json.dumps({"_id": "b", "text": 42}),                 # line 4: non-string text
    '{"_id": "c", "text": "broken',                       # line 5: invalid JSON
    "",                                                   # blank lines are not rows
    json.dumps({"_id": "d", "text": "also fine", "title": None}),
    json.dumps({"_id": "e", "body": "the text sits under another key"}),  # line 8: no configured text field
    json.dumps({"_id": "doc 9", "text": "an id a TREC run cannot hold"}),  # line 9: bad id
    # line 10: fine, though no int holds its number (a bare ValueError, naming no line, ended even --on-error skip)
    '{"_id": "f", "text": "x", "unread": ' + "9" * 5000 + "}",
]


@pytest.mark.parametrize("line, reason, message", [
    (2, "missing id", "missing id field '_id'"),
    (3, "duplicate id", "duplicate id 'a'"),
    (4, "non-string text", "field 'text' is int"),
    (5, "invalid JSON", r"invalid JSON \(Unterminated string starting at column 22\)"),  # where on the line
    (8, "missing text", r"none of the text fields \['title', 'text'\] is present \(the row has \['_id', 'body'\]\); "
                        "choose them with --fields"),
    (9, "bad id", r"id 'doc 9' holds ' ' at character 3; an id is one visible word"),
])
def test_bad_rows_fail_naming_the_line(tmp_path, line, reason, message):
    lines = [BAD_LINES[0], BAD_LINES[line - 1], BAD_LINES[6]]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(BadRowError, match=rf"line 2: {message}.*--on-error skip"):
        read_all(CorpusReader(path))


@pytest.mark.parametrize("doc_id, shown", [("doc\u200b9", r"\\u200b"), ("\ufeffdoc", r"\\ufeff"),
                                           ("\u202egnp.exe", r"\\u202e"), ("doc\uffff", r"\\uffff"),
                                           ("doc\xad9", r"\\xad"), ("doc\u3164", r"\\u3164"), ("\uffa0", r"\\uffa0"),
                                           ("doc\U000e0041", r"\\U000e0041"), ("x\u2063y", r"\\u2063")])
def test_an_id_that_shows_otherwise_than_it_is_stored_is_refused(tmp_path, doc_id, shown):
    """A zero-width space, a byte-order mark, a right-to-left override, a noncharacter, a soft hyphen, a Hangul
    filler, a tag character or an invisible operator in an id were stored: the id a run, a log or a terminal then
    shows is not the id a lookup needs."""
    path = write_jsonl(tmp_path / "bad.jsonl", [BAD_LINES[0], json.dumps({"_id": doc_id, "text": "x"})])
    with pytest.raises(BadRowError, match=rf"line 2: id .* holds '{shown}' at character \d+; an id is one visible word"):
        read_all(CorpusReader(path))
    joined = write_jsonl(tmp_path / "joined.jsonl", [json.dumps({"_id": "emoji-\U0001f469\u200d\U0001f52c", "text": "x"})])
    assert read_all(CorpusReader(joined))[0] == ["emoji-\U0001f469\u200d\U0001f52c"]  # a joiner is no problem
    flag = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"  # Scotland's: a flag, then tags
    tagged = write_jsonl(tmp_path / "flag.jsonl", [json.dumps({"_id": f"flag-{flag}", "text": "x"})])
    assert read_all(CorpusReader(tagged))[0] == [f"flag-{flag}"]
    with pytest.raises(ValueError, match="document 1's id"):  # an upsert's ids are searched joined: not into a flag
        check_ids(["\U0001f3f4", "\U000e0041x"])


@pytest.mark.parametrize("row, message", [
    ({"_id": "", "text": "x"}, "empty id field '_id'"),
    ({"_id": "n", "title": None, "text": None}, r"the text fields \['title', 'text'\] are all null"),
])
def test_an_empty_id_and_null_texts_are_named_as_such(tmp_path, row, message):
    """"_id": "" was called a missing field, and a null title and text "not present (the row has ['_id', 'title',
    'text'])": both sent the user looking for a typo."""
    path = write_jsonl(tmp_path / "bad.jsonl", [BAD_LINES[0], json.dumps(row)])
    with pytest.raises(BadRowError, match=rf"line 2: {message}"):
        read_all(CorpusReader(path))


def test_bad_rows_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", BAD_LINES)
    reader = CorpusReader(path, on_error="skip")
    ids, texts, rows = read_all(reader)
    assert ids == ["a", "d", "f"] and texts == ["fine", "also fine", "x"]
    assert rows == [1, 7, 10]
    assert reader.stats.skipped == {"missing id": 1, "duplicate id": 1, "non-string text": 1, "invalid JSON": 1,
                                    "missing text": 1, "bad id": 1}


def test_invalid_utf8_inside_a_json_string_names_its_line_and_is_skipped_on_request(tmp_path):
    """Arrow parses such a block whole and fails only when the strings are read: no line was named, and skipping
    did not skip."""
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "fine"}\n{"_id": "b", "text": "caf\xe9 latte"}\n{"_id": "c", "text": "ok"}\n')
    with pytest.raises(BadRowError, match=r"bytes.jsonl line 2: field 'text' holds byte 0xE9 at character 3, not UTF-8"):
        read_all(CorpusReader(path))
    reader = CorpusReader(path, on_error="skip")
    assert read_all(reader)[0] == ["a", "c"] and reader.stats.skipped == {"invalid UTF-8": 1}


def test_bad_rows_in_parquet_and_csv_name_the_row(tmp_path):
    table = pa.table({"_id": ["a", None, "a", "b"], "title": ["t", "t", "t", "t"], "text": ["x", "y", "z", "w"]})
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(BadRowError, match="row 2: missing id"):
        read_all(CorpusReader(tmp_path / "bad.parquet"))
    reader = CorpusReader(tmp_path / "bad.parquet", on_error="skip")
    assert read_all(reader)[0] == ["a", "b"]
    assert reader.stats.skipped == {"missing id": 1, "duplicate id": 1}
    (tmp_path / "bad.csv").write_text("_id,title,text\na,t,x\nb,t,y\na,t,z\n", encoding="utf-8")
    with pytest.raises(BadRowError, match="bad.csv row 4: duplicate id 'a'"):
        read_all(CorpusReader(tmp_path / "bad.csv"))
    (tmp_path / "spans.csv").write_text('_id,title,text\na,t,"two\nlines"\na,t,z\n', encoding="utf-8")
    with pytest.raises(BadRowError, match="spans.csv row 3: duplicate id 'a'"):  # line 4: it said "line 3"
        read_all(CorpusReader(tmp_path / "spans.csv"))
    pq.write_table(pa.table({"_id": ["a"], "title": ["t"], "text": [3]}), tmp_path / "int.parquet")
    with pytest.raises(BadRowError, match="row 1: field 'text' is int"):
        read_all(CorpusReader(tmp_path / "int.parquet"))


def test_a_csv_row_with_the_wrong_number_of_columns_is_named_or_skipped(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text('id,text\nd1,hello world\nd2,foo,bar\nd3,"quoted, comma"\n', encoding="utf-8")
    with pytest.raises(BadRowError, match=r"cols.csv row 3: 3 columns where the header has 2 \('d2,foo,bar'"):
        read_all(CorpusReader(path))
    reader = CorpusReader(path, on_error="skip")
    assert read_all(reader)[:2] == (["d1", "d3"], ["hello world", "quoted, comma"])
    assert reader.stats.skipped == {"wrong column count": 1}
    limited = CorpusReader(path, on_error="skip", limit=1)
    assert read_all(limited)[0] == ["d1"] and limited.stats.skipped == {}  # row 3 is past the limit
    path.write_text("id,text\nd1,a\nd2,foo,bar\nd3,b\nd4,c\n", encoding="utf-8")
    ids, _, rows = read_all(CorpusReader(path, on_error="skip"))  # the rows after a skipped one were numbered as
    assert ids == ["d1", "d3", "d4"] and rows == [2, 4, 5]  # if it came last: 2, 3, 4


def test_a_csv_row_with_the_wrong_number_of_columns_past_the_first_block_is_named_and_numbered(tmp_path):
    """pyarrow reads the next block ahead, so its handler sees that block's bad row while the one before is still
    read: the row's message was lost (a raw "CSV parse error", exit 2 without a resume hint), and skipped, it was
    counted in the earlier block and the rows between numbered one too high."""
    path = tmp_path / "late.csv"
    rows = [f"d{i},row number {i} of the file" for i in range(2, 800)]
    rows[600] = "d602,row number 602,with a third column"
    path.write_text("id,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"late.csv row 602: 3 columns where the header has 2"):
        read_all(CorpusReader(path, chunk_bytes=4096))
    reader = CorpusReader(path, chunk_bytes=4096, on_error="skip")
    ids, _, numbers = read_all(reader)
    assert len(ids) == 797 and reader.stats.skipped == {"wrong column count": 1}
    assert all(doc_id == f"d{row}" for doc_id, row in zip(ids, numbers)) and 602 not in numbers


def test_a_csv_byte_of_another_encoding_is_its_rows_error_not_the_files(tmp_path):
    """A Latin-1 byte (a spreadsheet's export) made pyarrow refuse the whole CSV, "invalid UTF8 data", even under
    --on-error skip; it is now its row's bad value, named, or skipped and counted."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"_id,title,text\nd1,T1,a\nd2,T2,b\nd3,T3,caf\xe9\nd4,T4,x\nd5,T5,\"last, caf\xe9\"\n")
    with pytest.raises(BadRowError, match=r"latin1.csv row 4: field 'text' holds byte 0xE9 at character 3, not "
                                          r"UTF-8 text \(a byte of another encoding, such as Latin-1, reads as one\)"):
        read_all(CorpusReader(path))
    reader = CorpusReader(path, on_error="skip")
    assert read_all(reader)[:2] == (["d1", "d2", "d4"], ["T1 a", "T2 b", "T4 x"])
    assert reader.stats.skipped == {"invalid UTF-8": 2}


def test_a_csv_header_of_another_encoding_is_named_before_pyarrow_reads_it(tmp_path):
    """A Latin-1 or UTF-16 header (Excel's "Unicode Text" export) failed as a decoder's bare message once pyarrow's
    reader was closed; the verb, exiting at once, was then killed by pyarrow's read-ahead thread (SIGABRT, exit 134)
    3 runs in 10 on a busy machine."""
    latin1, utf16 = tmp_path / "latin1.csv", tmp_path / "utf16.csv"
    latin1.write_bytes(b"_id,text,\xdcberschrift\na,Gr\xfc\xdfe,x\n")
    utf16.write_bytes("_id,text\na,b\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"latin1.csv: its header row is not UTF-8 text \(byte 0xDC at byte 10\)"):
        CorpusReader(latin1)
    with pytest.raises(ValueError, match=r"utf16.csv: it is UTF-16 text \(a spreadsheet's \"Unicode Text\" export\)"):
        CorpusReader(utf16)
    gzipped = tmp_path / "gz.csv"
    gzipped.write_bytes(gzip.compress(b"_id,text\nd1,one\n"))
    with pytest.raises(ValueError, match="gz.csv: it is gzip-compressed; name it gz.csv.gz"):
        CorpusReader(gzipped)
    utf8 = tmp_path / "utf8.csv"
    utf8.write_bytes("_id,text,Überschrift\nd1,coffee,x\n".encode())
    assert read_all(CorpusReader(utf8))[:2] == (["d1"], ["coffee"])


def test_a_csv_quote_that_never_closes_is_named_not_indexed_as_the_rest_of_the_file(tmp_path):
    """CSV values may hold newlines: a quote opened in a row's last field and never closed took every later row into
    that one document, and the build said nothing. A quoted value over several lines still reads as one."""
    path = tmp_path / "open.csv"
    path.write_text('id,text\r\nd1,"one\r\nline two"\r\nd2,"never closed\r\nd3,three\r\nd4,four\r\n', encoding="utf-8")
    with pytest.raises(BadRowError, match=r"open.csv row 3: a quote opens in its 'text' value and never closes, so "
                                          r"that value ran to the end of the file \(3 lines, rows after it included\)"):
        read_all(CorpusReader(path))
    reader = CorpusReader(path, on_error="skip")
    assert read_all(reader)[:2] == (["d1"], ["one\r\nline two"]) and reader.stats.skipped == {"unclosed quote": 1}
    path.write_text('id,text\nd1,"one\nline two"\nd2,"closed\nat last"\n', encoding="utf-8")
    assert read_all(CorpusReader(path))[:2] == (["d1", "d2"], ["one\nline two", "closed\nat last"])


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_a_never_closed_quote_in_a_column_not_read_is_refused_too(tmp_path, on_error):
    """In a last column lsr does not index (a url), the quote took the later rows into that value, and the build
    said "docs 1, skipped rows 0" (helper audit)."""
    path = tmp_path / "url.csv"
    path.write_text('id,text,url\nd1,hello vitamin,"http://a\nd2,world vitamin,http://b\nd3,foo vitamin,http://c\n',
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r"url.csv line 2: a quote opens in the row from that line and never closes, "
                                         r"so its value ran to the end of the file \(3 lines, rows after it included\)"):
        read_all(CorpusReader(path, fields=("text",), on_error=on_error))


def test_a_table_row_whose_text_columns_are_null_says_so(tmp_path):
    """A Parquet text column that is there but null was "none of the text fields is present; choose them with
    --fields", the wrong advice (helper audit)."""
    pq.write_table(pa.table({"_id": ["a", "b"], "text": ["some words", None]}), tmp_path / "t.parquet")
    with pytest.raises(BadRowError, match=r"t.parquet row 2: the text fields \['text'\] are all null or empty"):
        read_all(CorpusReader(tmp_path / "t.parquet"))
    (tmp_path / "t.csv").write_text("_id,text\na,some words\nb,\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"t.csv row 3: the text fields \['text'\] are all null or empty"):
        read_all(CorpusReader(tmp_path / "t.csv"))


def test_a_csv_column_named_twice_is_refused(tmp_path):
    """pyarrow read the first 'text' column and left the second out, without a word (helper audit)."""
    path = tmp_path / "twice.csv"
    path.write_text("id,text,text\nd1,a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="twice.csv: the header names the column 'text' 2 times, so which one to "
                                         "read is unclear; rename the others"):
        read_all(CorpusReader(path, fields=("text",)))
    path.write_text("id,text,url,url\nd1,a,b,c\n", encoding="utf-8")  # a column not read may repeat
    assert read_all(CorpusReader(path, fields=("text",)))[:2] == (["d1"], ["a"])


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_csv_quote_closed_by_a_later_rows_quote_is_refused_naming_both_lines(tmp_path, suffix):
    """pyarrow takes text after a closing quote into the value, so a quote opened in row 2 and closed by the quote
    inside row 4's value made rows 2 to 4 one document, silently (with --on-error skip as well)."""
    text = 'id,text\nd1,"unclosed she said\nd2,plain row\nd3,x"y\nd4,"fine ""quoted"" text"\nd5,last\n'
    path = tmp_path / f"merged{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    for on_error in ("fail", "skip"):
        with pytest.raises(ValueError, match=r"merged.csv(.gz)? line 4: text follows the quote that closes a value "
                                             r"\(in the row from line 2\); a quote inside a value is doubled"):
            read_all(CorpusReader(path, on_error=on_error))
    fixed = text.replace('"unclosed she said', "closed she said").replace('x"y', '"x""y"')
    path.write_bytes(gzip.compress(fixed.encode()) if suffix.endswith(".gz") else fixed.encode())
    assert read_all(CorpusReader(path))[1] == ["closed she said", "plain row", 'x"y', 'fine "quoted" text', "last"]


def test_a_csv_quote_left_open_after_a_doubled_quote_is_named(tmp_path):
    """A value whose doubled quote ("") came before the end of the file it ran to: the check compared the value's
    end, one quote, with the file's two, and took the rest of the file as one document."""
    path = tmp_path / "open.csv"
    path.write_text('id,text\nd1,fine\nd2,"another"" row\nd3,last\nd4,fine\n', encoding="utf-8")
    with pytest.raises(BadRowError, match="open.csv row 3: a quote opens in its 'text' value and never closes"):
        read_all(CorpusReader(path))
    assert read_all(CorpusReader(path, on_error="skip"))[0] == ["d1"]


@pytest.mark.parametrize("closed", [False, True])
def test_a_gzipped_csv_quote_that_never_closes_is_named_too(tmp_path, closed):
    """The check read the end of the file by seeking, so a .csv.gz was not checked: its rows after the open quote
    were one document again."""
    rows = "".join(f"d{i},row {i}\n" for i in range(2, 300))
    opened, closing = ("", '"') if closed else ("never closed", "")
    text = f'id,text\nd1,"one\nline two"\nd0,"{opened}\n{rows}{closing}\n'
    path = tmp_path / "open.csv.gz"
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    reader = CorpusReader(path, on_error="skip")
    ids = read_all(reader)[0]
    assert (ids, reader.stats.skipped) == ((["d1", "d0"], {}) if closed else (["d1"], {"unclosed quote": 1}))


def test_csv_values_over_several_lines_read_across_blocks_and_one_over_two_blocks_is_named(tmp_path):
    """A CSV of quoted multi-line values over one block failed as "CSV parser got out of sync with chunker"; a
    quote that never closes in a big file took the rest past two blocks: pyarrow's "straddling object" message."""
    path = tmp_path / "lines.csv"
    path.write_text("id,text\n" + "".join(f'd{i},"line one of {i}\nline two"\n' for i in range(2000)))
    assert len(read_all(CorpusReader(path, chunk_bytes=4096))[0]) == 2000
    path.write_text('id,text\nd1,one\nd2,"never closed\n' + "".join(f"d{i},row {i}\n" for i in range(3, 3000)))
    with pytest.raises(ValueError, match=r"lines.csv: a row after row 2 runs over 0.0078125 MiB: a quote in it "
                                         r"likely never closes"):
        read_all(CorpusReader(path, chunk_bytes=4096, on_error="skip"))
    path.write_text("id,text\nd1,one\nd2," + "word " * 3000 + "\nd3,three\n")  # no quote at all: a long value
    with pytest.raises(ValueError, match=r"or one of its values is that long, more than a CSV value may hold here "
                                         r"\(give such documents as JSONL\)"):
        read_all(CorpusReader(path, chunk_bytes=4096))


def test_unknown_format_and_missing_source(tmp_path):
    (tmp_path / "c.docx").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell the format"):
        CorpusReader(tmp_path / "c.docx")
    with pytest.raises(FileNotFoundError):
        CorpusReader(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match="on_error"):
        CorpusReader(sources(tmp_path)["jsonl"], on_error="ignore")


def test_a_text_file_holds_one_document_per_line(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes("\ufeffAspirin lowers heart attack risk.\n\n  Statins and muscle pain \r\nCafé\n".encode())
    ids, texts, rows = read_all(CorpusReader(path))  # the BOM was kept in the first document's text
    assert ids == ["1", "3", "4"] and texts == ["Aspirin lowers heart attack risk.", "Statins and muscle pain", "Café"]
    path.write_bytes("Aspirin lowers heart attack risk.\r\rStatins and muscle pain\rCafé\r".encode())  # old Mac
    assert read_all(CorpusReader(path))[:2] == (ids, texts)  # line ends: one document, "\r" inside, before


@pytest.mark.parametrize("other_row", [b"", b'{"_id": "c", "text": 5}\n'])
def test_a_byte_that_is_not_utf8_in_a_field_not_read_passes_whatever_its_block_holds(tmp_path, other_row):
    """A Latin-1 byte in a field the build does not read passed where pyarrow read the block, and failed the row as
    "invalid JSON" where another bad row in the block sent it down the line-by-line path."""
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "fine", "note": "caf\xe9"}\n' + other_row
                     + b'{"_id": "d", "text": "read caf\xe9"}\n')
    reader = CorpusReader(path, on_error="skip")
    assert read_all(reader)[:2] == (["a"], ["fine"])
    assert reader.stats.skipped == {"invalid UTF-8": 1, **({"non-string text": 1} if other_row else {})}


def test_csv_words_that_pyarrow_reads_as_null_are_text_and_a_lone_surrogate_is_a_bad_row(tmp_path):
    """A CSV id or title NA, null, N/A, nan or NULL was read as missing (the row refused, or the title dropped); a
    JSON "\\ud800" got past the reader and failed the encoder, naming neither file nor line, ignoring skip."""
    path = tmp_path / "nulls.csv"
    path.write_text("id,title,text\nNA,NULL,first\nnull,N/A,second\nnan,,third\n", encoding="utf-8")
    ids, texts, _ = read_all(CorpusReader(path, fields=("title", "text"), id_field="id"))
    assert ids == ["NA", "null", "nan"] and texts == ["NULL first", "N/A second", "third"]
    lone = write_jsonl(tmp_path / "lone.jsonl", ['{"_id": "a", "text": "fine"}', '{"_id": "b", "text": "x \\ud800 y"}'])
    with pytest.raises(BadRowError, match=r"lone.jsonl line 2: field 'text' holds a lone surrogate at character 2"):
        read_all(CorpusReader(lone))
    reader = CorpusReader(lone, on_error="skip")
    assert read_all(reader)[0] == ["a"] and reader.stats.skipped == {"invalid UTF-8": 1}


def test_corpus_hash_depends_on_documents_not_chunking():
    ids, texts = [f"d{i}" for i in range(10)], [f"text {i}" for i in range(10)]
    whole = CorpusHash().update(ids, texts)
    parts = CorpusHash()
    parts.update(ids[:3], texts[:3])
    resumed = CorpusHash(parts.hexdigest)
    assert resumed.update(ids[3:], texts[3:]) == whole
    assert CorpusHash().update(ids[::-1], texts[::-1]) != whole
    assert CorpusHash().update(ids, texts[:9] + ["changed"]) != whole


def test_shared_scifact_archive_streams(beir_dir, scifact):
    reader = CorpusReader(beir_dir / "scifact.tar.gz", chunk_bytes=1 << 20)
    ids, texts, _ = read_all(reader)
    assert len(ids) == 5183 and len(set(ids)) == 5183
    assert ids == list(scifact.corpus)
    assert texts == scifact.doc_texts(ids)


def test_a_text_field_under_another_name_is_a_warning_naming_the_fields_to_pass(tmp_path, caplog):
    """A corpus of title and abstract was indexed by its titles alone, silently (an INFO line --quiet hid)."""
    from lsr.cli.main import main

    jsonl = write_jsonl(tmp_path / "abstract.jsonl", [json.dumps({"_id": "a", "title": "Vitamin D", "year": 2001,
                                                                  "abstract": "Long abstract about bone fractures"})])
    assert main(["index", str(jsonl), str(tmp_path / "c"), "--dense", "none", "--bm25", "none", "--quiet"]) == 0
    assert ("abstract.jsonl has no 'text' field: reading 'title' only; its other fields 'abstract' are not indexed "
            "(pass --fields title,abstract to index them)") in [r.getMessage() for r in caplog.records]  # past --quiet
    caplog.clear()
    table = tmp_path / "abstract.csv"
    table.write_text("_id,title,abstract,year,url\na,Vitamin D,Long abstract,2001,x\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="lsr.ingest.corpus"):
        assert read_all(CorpusReader(table))[1] == ["Vitamin D"]  # what it said: the title only
        read_all(CorpusReader(table, fields=["title"]))  # chosen: no warning
        read_all(CorpusReader(sources(tmp_path)["csv"]))  # all the default fields: none either
    assert [r.getMessage() for r in caplog.records] == [
        "abstract.csv has no 'text' field: reading 'title' only; its other fields 'abstract', 'url' are not indexed "
        "(pass --fields title,abstract,url to index them)"]  # not the id, nor the numbers of 'year'


def test_documents_without_text_are_counted_in_a_warning(tmp_path, caplog, capsys):
    """Blank documents were indexed without a word: never found by a search, yet counted as indexed."""
    from lsr.cli.main import main

    jsonl = write_jsonl(tmp_path / "blank.jsonl", [json.dumps(row) for row in (
        {"_id": "a", "text": "Vitamin D and bone fractures"}, {"_id": "b", "text": ""}, {"_id": "c", "text": " \t"},
        {"_id": "d", "title": "", "text": "Statins"})])
    assert main(["index", str(jsonl), str(tmp_path / "c"), "--dense", "none", "--bm25", "none", "--quiet"]) == 0
    said = [r.getMessage() for r in caplog.records if "have no text" in r.getMessage()]  # past --quiet
    assert said == [f"{jsonl}: 2 of the documents read have no text in their fields title,text (the first: id 'b'); "
                    "they are indexed, but no search finds them"]
    # `lsr upsert` wrote such documents without a word (its server refuses them unless allowed)
    assert main(["upsert", str(jsonl), str(tmp_path / "c"), "--quiet"]) == 0
    assert f"warning: {jsonl}: 2 of the documents read have no text in their fields title,text (the first: id 'b'); " \
        "they are written, but no search finds them" in capsys.readouterr().err


def test_a_pipe_as_source_is_refused_at_once(tmp_path):
    """A named pipe was opened three times (columns, row count, the read): the second open waited forever."""
    import os
    import threading

    from lsr.cli.main import main

    pipe = tmp_path / "ff.jsonl"
    os.mkfifo(pipe)
    outcome = []
    opener = threading.Thread(target=lambda: outcome.append(_raised(lambda: CorpusReader(pipe))), daemon=True)
    opener.start()
    opener.join(10)
    if not outcome:  # its open waits for a writer: give it one that writes nothing, so it ends
        os.close(os.open(pipe, os.O_RDWR))
    assert outcome and isinstance(outcome[0], ValueError) and "is not a regular file (a pipe?)" in str(outcome[0])
    assert main(["index", str(pipe), str(tmp_path / "c"), "--dense", "none", "--bm25", "none"]) == 2


def _raised(call: Callable[[], object]) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return exc
    return None


def test_a_csv_whose_first_row_holds_a_value_over_a_mib_reads(tmp_path):
    """The columns were sniffed in pyarrow's 1 MiB blocks: "straddling object straddles two block boundaries"."""
    path = tmp_path / "big3.csv"
    path.write_text('_id,title,text\nd1,T,"' + "word " * 600_000 + '"\nd2,T,small\n', encoding="utf-8")
    ids, texts, _ = read_all(CorpusReader(path))
    assert ids == ["d1", "d2"] and texts[1] == "T small" and len(texts[0]) == 2 + len("word " * 600_000) - 1
    with pytest.raises(ValueError, match=r"big3.csv: a row after row 1 runs over 1 MiB: a quote in it likely never closes"):
        CorpusReader(path, chunk_bytes=1 << 19)  # a value over two blocks is named as in the read


def test_encode_refuses_an_output_that_is_not_parquet_before_it_opens_the_corpus(tmp_path, capsys):
    """The corpus was opened first (a CSV's threaded reader, never closed, aborted the process at exit, 134)."""
    from lsr.cli.main import main

    (tmp_path / "empty.csv").write_bytes(b"")  # a corpus read first fails otherwise
    assert main(["encode", "--input", str(tmp_path / "empty.csv"), "--output", str(tmp_path / "out.csv")]) == 2
    assert f"--output must be a .parquet file, got {tmp_path / 'out.csv'}" in capsys.readouterr().err


def test_a_pyserini_jsonl_whose_first_line_is_bad_still_adopts_its_fields(tmp_path):
    """Only the first line was sniffed: a bad one left _id/title/text, and every row was skipped as missing."""
    path = write_jsonl(tmp_path / "p.jsonl", ['{"id": "p0", "contents": ', "[1, 2]"]
                       + [json.dumps({"id": f"p{i}", "contents": f"text {i}"}) for i in (1, 2)])
    reader = CorpusReader(path, on_error="skip")
    assert read_all(reader)[:2] == (["p1", "p2"], ["text 1", "text 2"])
    assert reader.stats.skipped == {"invalid JSON": 2}


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux's /proc")
def test_a_source_the_system_cannot_read_is_the_machines_error_not_a_damaged_file(tmp_path, capsys):
    """Every OSError was "a damaged, truncated or mislabelled file?", exit 2, a permission denied too. Reading
    /proc/self/mem at its start is an I/O error (EIO) for root too."""
    from lsr.cli.main import main

    (tmp_path / "mem.jsonl").symlink_to("/proc/self/mem")
    assert main(["index", str(tmp_path / "mem.jsonl"), str(tmp_path / "c"), "--dense", "none", "--bm25", "none"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lsr index: error: cannot read {tmp_path / 'mem.jsonl'}: Input/output error")
    reader = CorpusReader(sources(tmp_path)["jsonl"])
    denied = reader._unreadable(PermissionError(13, "Permission denied"))
    assert type(denied) is OSError and str(denied) == f"cannot read {reader.source}: Permission denied"
    assert isinstance(reader._unreadable(gzip.BadGzipFile("Not a gzipped file")), ValueError)  # the bytes'
