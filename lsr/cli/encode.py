"""Print the weighted terms of a text's SPLADE vector: the explainability tool.

Examples:
  lsr encode "what causes diabetes?" --query
  lsr encode "Aspirin lowers the risk of heart attack." --top 10 --json
"""

from __future__ import annotations

import argparse
import json
import sys

from lsr.cli.device import add_device_arguments, device_options

HELP = "show the weighted terms SPLADE gives a text"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="+", help="the text to encode (several words are joined with spaces)")
    p.add_argument("--model", default="splade-tiny", help="model name, hub id or local folder (default: splade-tiny)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--query", dest="side", action="store_const", const="query", help="encode as a query (64 tokens)")
    side.add_argument("--document", dest="side", action="store_const", const="document", help="encode as a document (default, 256 tokens)")
    p.add_argument("--top", type=int, default=20, help="how many terms to print (default 20; 0 = all)")
    p.add_argument("--no-expansion", action="store_true", help="keep only the text's own tokens")
    p.add_argument("--json", action="store_true", help="print {token: weight} as JSON")
    add_device_arguments(p)
    p.set_defaults(side="document")


def run(args: argparse.Namespace) -> int:
    from lsr.encode.splade import SpladeEncoder

    if args.top < 0:
        raise ValueError(f"--top must be ≥ 0, got {args.top}")
    text = " ".join(args.text)
    options = {"query_expansion": not args.no_expansion, "doc_expansion": not args.no_expansion}
    encoder = SpladeEncoder.from_pretrained(args.model, **device_options(args), **options)
    encode = encoder.encode_queries if args.side == "query" else encoder.encode_documents
    vector = encode([text])
    terms = vector.to_dicts(top=args.top or None)[0]
    if args.json:
        json.dump(terms, sys.stdout, ensure_ascii=False)
        print()
        return 0
    print(f"{args.side} vector: {vector.nnz} non-zero terms of {vector.vocab_size} (model {args.model})")
    for token, weight in terms.items():
        print(f"{weight:8.4f}  {token}")
    return 0
