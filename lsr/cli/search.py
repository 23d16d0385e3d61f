"""Search a collection built by `lsr index`, in-process (no server): one query, or a whole topics file.
A sharded collection (`lsr index --shards N`) has its shards opened in this process, with no Ray, and gives the
results `lsr serve` gives for it.

With --topics FILE (TSV `qid<TAB>text`, or JSONL with _id/text such as BEIR's queries.jsonl) every
query is searched and a standard TREC run (`qid Q0 docid rank score tag`) is written to --output,
ready for `lsr eval RUN QRELS` or trec_eval.

With neither a QUERY nor --topics, queries are read from standard input, one per line (with a `query>` prompt
on a terminal, where Ctrl-C drops the line typed and a query it refuses is an error line, not the end), so the
models load once for many queries: Ctrl-D ends. Piped in, each result starts with
`> QUERY`; with --json each is one JSON line that carries its query.

Examples:
  lsr search runs/scifact "does vitamin d prevent fractures?"       # hybrid: every leg the collection has
  lsr search runs/scifact "does vitamin d prevent fractures?" --mode sparse
  lsr search runs/scifact "statins and muscle pain" --mode hybrid --prf --k 5 --explain
  lsr search runs/scifact "statins and muscle pain" --mode bm25
  lsr search runs/scifact "statins and muscle pain" --mode hybrid --normalization rrf --bm25-weight 0.3 --sparse-weight 0.35 --dense-weight 0.35
  lsr search runs/scifact --topics queries.tsv --output run.trec --k 100 --mode hybrid --threads 2
  lsr search runs/scifact                          # then type queries; Ctrl-D ends
  printf 'statins\\nvitamin d\\n' | lsr search runs/scifact --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator

from lsr.cli.device import add_device_arguments, add_query_encoder_argument, lazy_device_options
from lsr.cli.fusion import add_fusion_arguments, add_prf_arguments, chosen_mode, hybrid_options, prf_options
from lsr.cli.main import flags_given, name_argument, path_argument, refuse_unused, shell_word

HELP = "search a collection in-process and print the hits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", type=path_argument, metavar="COLLECTION", help="folder written by `lsr index`")
    p.add_argument("query", nargs="*", default=[], metavar="QUERY",  # without a default argparse called it required
                   help="query text (or --topics; with neither, queries are read from standard input, one per line)")
    p.add_argument("--topics", metavar="FILE", type=path_argument, help="search every query of a TSV/JSONL topics file (needs --output)")
    p.add_argument("--output", metavar="RUN", type=path_argument, help="TREC run file to write for --topics (- writes it to standard output)")
    p.add_argument("--tag", type=name_argument, default=None, help="run tag in the TREC file (default: lsr-MODE)")
    p.add_argument("--threads", type=int, default=None,
                   help="with --topics: queries searched in parallel, one torch thread each (default: one at a time)")
    p.add_argument("-k", "--k", type=int, default=None, help="hits per query, 1..1000 (default 10; 1000 with --topics)")
    add_fusion_arguments(p)
    add_prf_arguments(p)
    add_query_encoder_argument(p)
    p.add_argument("--text", action="store_true", help="print each hit's text")
    p.add_argument("--explain", action="store_true", help="print each hit's top contributing terms")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true",
                   help="with --topics: no progress bar; reading standard input: no \"loading the models\" line")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    from lsr.service.coordinator import open_in_process

    if args.topics and args.query:
        raise ValueError("give a QUERY or --topics FILE, not both")
    if args.topics and not args.output:
        raise ValueError("--topics needs --output RUN, the TREC run file to write")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
    if args.topics:
        refuse_unused(flags_given(args, "text", "explain", "json"), "--topics writes a TREC run, which holds ids and "
                      "scores only")
    else:
        refuse_unused(flags_given(args, "tag", "threads", "output"), "without --topics no TREC run is written")
    if args.query:  # checked as a search would check it, before the slow model load
        from lsr.encode.texts import is_blank

        if is_blank(" ".join(args.query)):
            raise ValueError("QUERY is empty; give some words (or no QUERY, to type queries or pipe them in)")
        _check_query(" ".join(args.query), "QUERY")
    hybrid = hybrid_options(args)
    prf_options(args)  # bad flag combinations fail before the slow model load
    if args.topics:
        from lsr.eval.runs import read_topics
        from lsr.files import check_writable, is_stream
        from lsr.search.batch import search_topics

        topics = read_topics(args.topics)  # before the slow model load: a bad file fails at once
        if args.output != "-":
            _check_output_apart(Path(args.output), Path(args.topics), Path(args.collection))
            check_writable(Path(args.output))  # and an output it could not write, after every query was searched
        searcher = open_in_process(args.collection, query_encoder=args.query_encoder,
                                 threads=1 if (args.threads or 1) > 1 else None, **lazy_device_options(args))
        prf = prf_options(args, searcher.default_prf)
        mode = chosen_mode(args, searcher.modes)
        _note_untuned(searcher, mode, hybrid)
        searcher.warm_up(mode, hybrid, prf)
        written = search_topics(searcher, topics, args.output, k=1000 if args.k is None else args.k, mode=mode,
                                hybrid=hybrid, prf=prf, bound_factor=args.bound_factor,
                                tag=args.tag or f"lsr-{mode}", threads=args.threads or 1, progress=not args.quiet)
        if args.output == "-" or is_stream(Path(args.output)):  # a pipe or /dev/stdout: the summary stays out of it
            where = "standard output" if args.output == "-" else args.output
            print(f"{len(topics):,} queries, {written.hits:,} hits written to {where}", file=sys.stderr)
        else:
            print(f"{len(topics):,} queries, {written.hits:,} hits written to {args.output}; score it with: "
                  f"lsr eval {shell_word(args.output)} QRELS")
        if written.without_hits:
            named = ", ".join(written.without_hits[:5]) + (", …" if len(written.without_hits) > 5 else "")
            print(f"lsr search: note: {len(written.without_hits):,} of {len(topics):,} queries found no document "
                  f"({named}); the run has no line for them, so trec_eval leaves them out of its means unless run "
                  "with -c (lsr eval scores them 0)", file=sys.stderr)
        return 0
    interactive = not args.query and sys.stdin.isatty()
    if interactive and args.mode != "bm25" and not args.quiet:  # bm25 loads none
        print("loading the models…", file=sys.stderr, flush=True)
    searcher = open_in_process(args.collection, query_encoder=args.query_encoder, **lazy_device_options(args))
    prf = prf_options(args, searcher.default_prf)
    mode = chosen_mode(args, searcher.modes)
    _note_untuned(searcher, mode, hybrid)
    searcher.warm_up(mode, hybrid, prf)

    def search(text: str) -> Any:
        return searcher.search(text, k=10 if args.k is None else args.k, mode=mode, hybrid=hybrid, prf=prf,
                               include_text=args.text, explain=args.explain, bound_factor=args.bound_factor)

    if args.query:
        _print_result(search(" ".join(args.query)), mode, args)
        return 0
    for line_no, text in _queries_from_stdin(interactive):
        try:
            _check_query(text, "the query" if interactive else f"standard input line {line_no}")
        except ValueError as exc:
            if not interactive:  # a piped stream stops at its bad line, as a topics file does
                raise
            print(f"lsr search: error: {exc}", file=sys.stderr)  # a typo ended the session and its loaded models
            continue
        _print_result(search(text), mode, args, query=text, echo=not interactive)
    return 0



def _note_untuned(searcher: Any, mode: str, hybrid: Any) -> None:
    """Say so when fusion flags set aside the fusion `lsr tune` stored: the flags not given take their defaults, not
    the tuned values, so `--candidates 100` alone scored 0.030 below the tuned run it looked like (same run tag)."""
    tuned = searcher.search_defaults.get("hybrid")
    if mode == "hybrid" and hybrid is not None and tuned and hybrid != searcher.default_hybrid:
        print(f"note: the fusion flags replace {searcher.collection.path}'s tuned fusion ({_fusion_text(tuned)}); the "
              "flags not given take their defaults, not the tuned values", file=sys.stderr)


def _fusion_text(options: dict) -> str:
    weights = "/".join(f"{options.get(leg, 0):g}" for leg in ("sparse_weight", "dense_weight", "bm25_weight"))
    combination = options.get("combination", "arithmetic_mean")
    return f"{options.get('normalization', 'min_max')} {weights}" + ("" if combination == "arithmetic_mean" else
                                                                      f" {combination}")


def _check_output_apart(output: Path, topics: Path, collection: Path) -> None:
    """The run may not replace its topics file or a file of the collection: both were overwritten without a word (a
    run in place of lsr.json left a collection that no longer opened)."""
    from lsr.search.batch import check_outside

    if output.resolve() == topics.resolve():
        raise ValueError(f"--output {output} is the --topics file; write the run to another file")
    check_outside(output, collection, "--output")

def _check_query(text: str, what: str) -> None:
    """What a search would refuse in ``text``, named as the user gave it (``what``), before it is searched."""
    from lsr.encode.texts import check_query_length, check_utf8

    check_query_length(text, what)
    check_utf8(text, what)


def _queries_from_stdin(interactive: bool) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines of standard input, stripped; on a terminal each read shows a
    prompt, and Ctrl-C there drops the line typed so far (as a shell does) rather than ending the session: Ctrl-D
    ends it."""
    from lsr.cli.main import Terminated, interrupt_handled

    line_no = 0
    while True:
        try:
            line = input("query> ") if interactive else sys.stdin.readline()
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt as stop:
            if not interactive or isinstance(stop, Terminated):
                raise
            interrupt_handled()
            print(file=sys.stderr)
            continue
        if not interactive and not line:
            return
        line_no += 1
        if line.strip():
            yield line_no, line.strip()


def _print_result(result: Any, mode: str, args: argparse.Namespace, query: str | None = None,
                  echo: bool = False) -> None:
    """Hits as ``lsr query`` prints them (``lsr.cli.hits``); JSON carries its ``query`` on one line for each one read
    from standard input, and ``echo`` heads the table with ``> QUERY`` (piped queries)."""
    from lsr.cli.hits import print_json, print_table, result_record

    if args.json:
        print_json(result_record(result, text=args.text, explain=args.explain), query=query)
        return
    if echo:
        print(f"> {query}")
    print_table(result, mode)
