"""Query a running `lsr serve` endpoint and print the hits.

Examples:
  lsr query --endpoint 127.0.0.1:50051 "what causes diabetes?"
  lsr query --endpoint 127.0.0.1:50051 "statins and muscle pain" --mode hybrid --prf --k 5 --text
  lsr query --endpoint search.internal:443 --tls --auth-token-file token.txt "aspirin" --json
"""

from __future__ import annotations

import argparse

from lsr.cli.endpoint import add_endpoint_arguments, connect
from lsr.cli.fusion import add_fusion_arguments, add_prf_arguments, chosen_mode, hybrid_options, prf_options

HELP = "search a running `lsr serve` endpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="*", help="the query (several words are joined with spaces)")
    add_endpoint_arguments(p, required=True)
    p.add_argument("-k", "--k", type=int, default=10, help="hits to return, 1..1000 (default 10)")
    add_fusion_arguments(p)
    add_prf_arguments(p)
    p.add_argument("--text", dest="include_text", action="store_true", help="print each hit's text")
    p.add_argument("--explain", action="store_true", help="print the terms that contributed most to each hit")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")


def run(args: argparse.Namespace) -> int:
    import grpc

    from lsr.encode.texts import check_utf8, is_blank
    from lsr.search.searcher import check_k
    from lsr.sparse import check_bound_factor
    from lsr.service.client import call_failed

    hybrid = hybrid_options(args)
    text = " ".join(args.text)
    if is_blank(text):
        # `lsr query --endpoint H --tls "my query"`: --tls takes an optional CA file, so it took the query
        took = (f" (--tls took {args.tls!r} as its CA certificate: put the query before --tls, or write "
                "--tls=CA_CERT)") if isinstance(args.tls, str) and not args.text else ""
        raise ValueError(f"the query is empty; give the words to search for{took}")
    check_utf8(text, "the query")  # gRPC's encoder said only "surrogates not allowed"
    check_k(args.k)  # with no server up, --k 0 was "no server answered" (exit 1: retry) where a live one said exit 2
    check_bound_factor(args.bound_factor)
    with connect(args) as client:
        try:
            mode = chosen_mode(args, lambda: client.stats()["details"].get("modes", "sparse").split(","))
            result = client.search(
                text, k=args.k, mode=mode, hybrid=hybrid, prf=prf_options(args),
                include_text=args.include_text, explain=args.explain, bound_factor=args.bound_factor,
            )
        except grpc.RpcError as exc:
            raise call_failed(exc) from None
    from lsr.cli.hits import print_json, print_table, result_record

    if args.json:
        print_json(result_record(result, text=args.include_text, explain=args.explain,
                                index_version=client.last_index_version))
    else:
        print_table(result, mode)
    return 0
