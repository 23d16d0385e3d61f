"""Print the weighted terms of a text's SPLADE vector (the explainability tool), or encode a whole file of texts.

A file (--input: any corpus `lsr index` reads, or a .txt with one text per line) becomes one
Parquet vectors file (--output: id, text, indices, values, truncated; the model is named in its metadata),
which `lsr index --pre-encoded` turns into a collection without encoding again.

Examples:
  lsr encode "what causes diabetes?" --query
  lsr encode "Aspirin lowers the risk of heart attack." --top 10 --json
  lsr encode --input docs.jsonl --output vectors.parquet
  lsr encode --input notes.txt --output notes.parquet --model naver/splade-v3   # a model in the HF cache
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lsr.cli.device import add_device_arguments, device_options
from lsr.cli.main import fields_argument, flags_given, name_argument, path_argument, refuse_unused, shell_word
from lsr.files import check_writable, is_stream

HELP = "show the weighted terms SPLADE gives a text, or encode a file of texts into a vectors file"


def add_arguments(p: argparse.ArgumentParser) -> None:

    p.add_argument("text", nargs="*", help="the text to encode (several words are joined with spaces)")
    p.add_argument("--model", type=name_argument, default="splade-tiny", help="model name, hub id or local folder (default: splade-tiny)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--query", dest="side", action="store_const", const="query",
                      help="encode as a query (up to the model's limit, at most 512 tokens; a model folder with an "
                           "idf.json gives its inference-free query: the IDF weights of the query's tokens)")
    side.add_argument("--document", dest="side", action="store_const", const="document",
                      help="encode as a document (default; --max-length tokens)")
    p.add_argument("--top", type=int, default=20, help="how many terms to print (default 20; 0 = all)")
    p.add_argument("--no-expansion", action="store_true", help="keep only the text's own tokens")
    p.add_argument("--json", action="store_true", help="print {token: weight} as JSON")
    files = p.add_argument_group("a file of texts")
    files.add_argument("--input", metavar="FILE", type=path_argument, help="corpus to encode: .jsonl(.gz), .csv, .parquet, BEIR folder/archive, or .txt")
    files.add_argument("--output", metavar="VECTORS.parquet", type=path_argument, help="where the vectors go (with --input)")
    files.add_argument("--fields", type=fields_argument, default=("title", "text"), help="text fields of --input (default: title,text, those it has; else contents)")
    files.add_argument("--id-field", type=name_argument, default="_id", help="id field of --input (default: _id, else id, docid or doc_id)")
    files.add_argument("--batch-size", type=int, default=32, help="documents per forward pass (default: 32)")
    files.add_argument("--max-length", type=int, default=None,
                       help="document tokens kept (default: 256, or the model folder's max_seq_length where smaller), "
                            "for a TEXT encoded as a document too")
    files.add_argument("--on-error", choices=("fail", "skip"), default="fail", help="bad rows: stop, or skip and count")
    files.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_arguments(p)
    p.set_defaults(side="document")


def run(args: argparse.Namespace) -> int:
    if args.max_length is not None and args.max_length < 4:  # named as the constructor's max_length, once loaded
        raise ValueError(f"--max-length must be at least 4, got {args.max_length}")
    if args.input or args.output:
        return _encode_file(args)
    from lsr.encode.splade import InferenceFreeQueryEncoder, SpladeEncoder, idf_table_path
    from lsr.encode.texts import check_utf8, is_blank

    refuse_unused(flags_given(args, "fields", "id_field", "batch_size", "on_error", "quiet"),
                  "a TEXT is given, not an --input file")
    if args.side == "query":
        refuse_unused(flags_given(args, "max_length"), "a query keeps up to the model's limit, at most 512 tokens")
    if args.top < 0:
        raise ValueError(f"--top must be ≥ 0, got {args.top}")
    text = " ".join(args.text)
    if is_blank(text):  # a zero-width space printed "0 non-zero terms" and exit 0
        raise ValueError("TEXT has no words; give a text to encode (or --input FILE --output VECTORS.parquet)")
    check_utf8(text, "TEXT")  # before the model loads
    options = {"query_expansion": not args.no_expansion, "doc_expansion": not args.no_expansion}
    device = device_options(args)
    source = f"model {args.model}"
    if args.side == "query" and idf_table_path(args.model) is not None:  # what a search with this model does
        refuse_unused(flags_given(args, "no_expansion"), f"{args.model}'s queries are inference-free (its idf.json): "
                      "a query's vector holds its own tokens only")
        vector = InferenceFreeQueryEncoder.from_pretrained(args.model).encode_queries([text])
        source += ", inference-free: IDF weights from its idf.json"
    else:
        encoder = SpladeEncoder.from_pretrained(args.model, max_length=args.max_length, **device, **options)
        vector = (encoder.encode_queries if args.side == "query" else encoder.encode_documents)([text])
    terms = vector.to_dicts(top=args.top or None)[0]
    if args.json:
        json.dump(terms, sys.stdout, ensure_ascii=False)
        print()
        return 0
    print(f"{args.side} vector: {vector.nnz} non-zero terms of {vector.vocab_size} ({source})")
    for token, weight in terms.items():
        print(f"{weight:8.4f}  {token}")
    return 0


def _encode_file(args: argparse.Namespace) -> int:
    from lsr.encode.models import document_length
    from lsr.ingest.layout import collection_holding
    from lsr.ingest.vector_file import encode_file

    if not (args.input and args.output):
        raise ValueError("--input and --output go together: lsr encode --input FILE --output VECTORS.parquet")
    if args.text:
        raise ValueError("give either a TEXT or --input FILE, not both")
    refuse_unused((["--query"] if args.side == "query" else []) + flags_given(args, "top", "no_expansion", "json"),
                  "an --input file is encoded as documents, with expansion, into --output (nothing is printed)")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if Path(args.output).resolve() == Path(args.input).resolve():  # the corpus was replaced by its vectors
        raise ValueError(f"--output {args.output} is the --input file; give another path for the vectors")
    holder = collection_holding(Path(args.output))
    if holder is not None:  # exit 0, and the collection's part-00000.parquet was its vectors: no repair rebuilt it
        raise ValueError(f"--output {args.output} lies inside the collection {holder}; write the vectors outside it")
    device = device_options(args)  # a GPU asked for and missing is one line before the corpus is read
    check_writable(Path(args.output))  # before the model loads and the corpus is encoded
    length = document_length(args.model) if args.max_length is None else args.max_length
    summary = encode_file(args.input, args.output, model=args.model, fields=args.fields, id_field=args.id_field,
                          on_error=args.on_error, batch_size=args.batch_size, max_length=length,
                          progress=not args.quiet, **device)
    skipped = sum(summary.skipped.values())
    streamed = is_stream(Path(args.output))  # a pipe (or standard output): the summary must not follow the file's bytes
    documents = f"{summary.docs:,} document{'s' * (summary.docs != 1)}"
    print(f"{documents} encoded into {args.output} ({summary.postings:,} postings, "
          f"{summary.truncated:,} truncated at {summary.kept_tokens} tokens, {skipped:,} bad rows skipped"
          + (f": {', '.join(f'{k} {v}' for k, v in sorted(summary.skipped.items()))}" if skipped else "")
          + (f", {summary.blank_lines:,} blank lines passed over" if summary.blank_lines else "") + ")",
          file=sys.stderr if streamed else sys.stdout)
    if not streamed:
        print(f"index them with: lsr index {shell_word(args.output)} COLLECTION --pre-encoded")
    return 0
