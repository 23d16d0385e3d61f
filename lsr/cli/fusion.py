"""``--mode``, the hybrid fusion flags and the PRF flags shared by `lsr search` and `lsr query`."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

FUSION_HELP = """hybrid fusion: each leg with a positive weight joins (sparse, dense, bm25); min_max / l2 / z_score
normalise each list and take the weighted mean (for min_max and l2 also the geometric or harmonic one, as OpenSearch's
normalization processor does), rrf sums weight / (rrf_k + rank). With none of these
flags, the collection's tuned defaults (`lsr tune`) apply, else the cross-dataset default (docs/quality.md);
with any of them, those not given take the defaults below"""
FLAGS = ("normalization", "sparse_weight", "candidates", "dense_weight", "bm25_weight", "rrf_k", "combination")


def add_fusion_arguments(p: argparse.ArgumentParser) -> None:
    from lsr.search.fusion import COMBINATIONS, FUSIONS, RRF_K
    from lsr.search.searcher import MODES

    p.add_argument("--mode", choices=("auto", *MODES), default="auto",
                   help="retrieval mode; auto (the default): hybrid, fusing every leg the collection has (its tuned "
                        "fusion, else the cross-dataset one: 0.735 nDCG@10 on SciFact against 0.644 for SPLADE "
                        "alone), or sparse when SPLADE is its only leg")
    group = p.add_argument_group("hybrid fusion", FUSION_HELP)
    group.add_argument("--normalization", choices=FUSIONS, default=None, help="how lists are fused (default min_max)")
    group.add_argument("--sparse-weight", type=float, default=None, help="weight of the SPLADE list, 0..1 (default 0.5)")
    group.add_argument("--dense-weight", type=float, default=None, help="weight of the dense list, 0..1 (default 1 - sparse weight)")
    group.add_argument("--bm25-weight", type=float, default=None, help="weight of the BM25 list, 0..1 (default 0: left out)")
    group.add_argument("--rrf-k", type=int, default=None, help=f"RRF's rank constant (default {RRF_K})")
    group.add_argument("--combination", choices=COMBINATIONS, default=None,
                       help="how min_max or l2 scores are combined (default arithmetic_mean)")
    group.add_argument("--candidates", type=int, default=None, help="candidates per list before fusion (default 100)")
    p.add_argument("--bound-factor", type=float, default=1.0, metavar="F",
                   help="search the SPLADE list approximately: F > 1 leaves out more of the query's low-weight terms "
                        "(at 1M documents 3 kept recall@10 0.98 in two thirds of the exact time, 5 kept 0.92 in half); "
                        "1, the default, is exact")


def chosen_mode(args: argparse.Namespace, served: Callable[[], Sequence[str]]) -> str:
    """``--mode``, with auto resolved against the modes a collection serves (``served()``, asked only for auto); a
    fusion flag that would be ignored (a weight outside hybrid, a fusion setting outside hybrid without PRF, an RRF
    constant without RRF) is refused."""
    from lsr.search.searcher import check_idle_options, resolve_mode

    from lsr.sparse import check_bound_factor

    check_bound_factor(args.bound_factor, "--bound-factor")  # before any model loads
    mode = resolve_mode(args.mode, served)
    check_idle_options(mode, None, None, args.bound_factor, flag=lambda name: "--" + name.replace("_", "-"))
    weighed = next((flag for flag in ("sparse_weight", "dense_weight", "bm25_weight") if getattr(args, flag) is not None),
                   None)
    one_list = f"--mode {args.mode}{' (sparse here: SPLADE is its only leg)' if args.mode == 'auto' else ''} runs one list"
    if weighed and mode != "hybrid":
        raise ValueError(f"--{weighed.replace('_', '-')} weighs a list of hybrid fusion, and {one_list}; use --mode hybrid")
    fusing = next((flag for flag in ("normalization", "rrf_k", "candidates", "combination")
                   if getattr(args, flag) is not None), None)
    if fusing and mode != "hybrid" and not getattr(args, "prf", False):  # PRF's depth and its after-run fusion use them
        raise ValueError(f"--{fusing.replace('_', '-')} sets how hybrid fusion joins lists, and {one_list}; use "
                         "--mode hybrid (or --prf, whose second run they shape)")
    if args.rrf_k is not None and args.normalization != "rrf":
        raise ValueError(f"--rrf-k is RRF's rank constant, and --normalization is {args.normalization or 'min_max'}; "
                         "add --normalization rrf")
    _refuse_idle_flags(args, mode, served)
    return mode


def _refuse_idle_flags(args: argparse.Namespace, mode: str, served: Callable[[], Sequence[str]]) -> None:
    """PRF flags, --explain, --bound-factor and the query encoder, where no list they act on is searched (the mode,
    the collection's legs or a weight of 0 leave it out): each ran, and the hits were those without it."""
    from lsr.cli.main import flags_given, refuse_unused

    acting = [dest for dest in ("prf_dense_weight", "prf_weight", "prf_terms", "prf_min_idf", "query_encoder")
              if hasattr(args, dest)]
    if not (flags_given(args, *acting) or getattr(args, "explain", False) or args.bound_factor != 1.0):
        legs = {"sparse", "dense"}  # nothing to refuse: served() may be a call to the server
    else:
        legs = _searched_legs(args, mode, served)

    def lacking(leg: str) -> str:
        if mode != "hybrid":
            return f"--mode {mode} has none"
        if leg not in served():
            return f"this collection has no {leg} leg (built with --{leg} none)"
        return f"--{leg}-weight 0 leaves that list out"

    if "dense" not in legs:
        refuse_unused(flags_given(args, "prf_dense_weight"), f"it moves the dense query, and {lacking('dense')}")
    if "sparse" not in legs:
        if getattr(args, "explain", False):  # its explanations came back empty, unsaid
            raise ValueError(f"--explain lists the SPLADE terms each hit shares with the query, and "
                             f"{lacking('sparse')}; use --mode sparse, hybrid or auto")
        idle = flags_given(args, "prf_terms", "prf_min_idf")
        if "dense" not in legs or flags_given(args, "prf_dense_weight"):  # else it is the dense β too
            idle = flags_given(args, "prf_weight") + idle
        refuse_unused(idle, f"they move the SPLADE query, and {lacking('sparse')}")
        if hasattr(args, "query_encoder"):
            refuse_unused(flags_given(args, "query_encoder"), f"it encodes SPLADE queries, and {lacking('sparse')}")
        if mode == "hybrid" and args.bound_factor != 1.0:
            raise ValueError(f"--bound-factor approximates the SPLADE list, and {lacking('sparse')}")
    if getattr(args, "prf_interpolate", None) in ("before", "none"):
        refuse_unused(flags_given(args, "prf_after_weight"),
                      f"it weighs the PRF run in after/both interpolation, not {args.prf_interpolate}")


def _searched_legs(args: argparse.Namespace, mode: str, served: Callable[[], Sequence[str]]) -> set[str]:
    """The lists a search runs: the mode's one, or in hybrid those the collection has that the weights given keep
    (all it has when no weight is given: its tuned fusion's are not known here)."""
    if mode != "hybrid":
        return {mode}
    has = set(served())
    if not any(getattr(args, flag) is not None for flag in FLAGS):
        return has
    return has & set(hybrid_options(args).weights())


def hybrid_options(args: argparse.Namespace):
    """The HybridOptions the flags describe (unset ones keep HybridOptions' defaults), or None when no flag was
    given, so the collection's tuned defaults apply."""
    from lsr.search.searcher import HybridOptions

    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    if not given:
        return None
    options = HybridOptions(**given)
    _in_flags(options.check, {f"hybrid {name}": f"--{name.replace('_', '-')}" for name in FLAGS})
    return options


def _in_flags(check: Callable[[], None], names: dict[str, str]) -> None:
    """``check()``, its message naming the flags (``--prf-docs``) where it names the API's fields (``PRF
    feedback_docs``), which a command line never showed."""
    try:
        check()
    except (TypeError, ValueError) as exc:
        text = str(exc)
        for said, flag in names.items():
            text = text.replace(f"{said} must", f"{flag} must")
        raise type(exc)(text) from None


PRF_HELP = """pseudo-relevance feedback: --prf alone uses the collection's tuned PRF (`lsr tune`), else the
cross-dataset default (shown below as "untuned"); each --prf-* flag overrides one setting. interpolate:
before = feedback documents from the fused list, after = PRF run interpolated with the first run, both, none"""
PRF_FLAGS = {"prf_docs": "feedback_docs", "prf_weight": "weight", "prf_terms": "max_terms", "prf_interpolate": "interpolate",
             "prf_after_weight": "after_weight", "prf_dense_weight": "dense_weight", "prf_min_idf": "min_idf"}


def add_prf_arguments(p: argparse.ArgumentParser) -> None:
    from lsr.search.searcher import PRF_INTERPOLATIONS, PrfOptions

    d = PrfOptions()
    group = p.add_argument_group("pseudo-relevance feedback", PRF_HELP)
    group.add_argument("--prf", action="store_true", help="apply pseudo-relevance feedback")
    group.add_argument("--prf-docs", type=int, default=None, help=f"feedback documents (untuned {d.feedback_docs})")
    group.add_argument("--prf-weight", type=float, default=None,
                       help=f"Rocchio β for the sparse query (0: leave it; untuned {d.weight:g})")
    group.add_argument("--prf-dense-weight", type=float, default=None,
                       help="Vector-PRF β for the dense query (0: leave it; untuned: the sparse β)")
    group.add_argument("--prf-terms", type=int, default=None, help=f"new sparse terms at most (untuned {d.max_terms})")
    group.add_argument("--prf-min-idf", type=float, default=None,
                       help=f"expansion terms need at least this BM25 IDF (untuned {d.min_idf:g}: any)")
    group.add_argument("--prf-interpolate", choices=PRF_INTERPOLATIONS, default=None,
                       help=f"where to interpolate (untuned {d.interpolate})")
    group.add_argument("--prf-after-weight", type=float, default=None,
                       help=f"weight of the PRF run in after/both (untuned {d.after_weight:g})")


def prf_options(args: argparse.Namespace, defaults=None):
    """None without --prf; True (the collection's stored PRF) with no --prf-* flag; else ``defaults`` (the
    collection's PRF, in-process) with the given flags replaced, or without ``defaults`` the given settings alone,
    which a server sets over its collection's."""
    from dataclasses import replace

    given = {field: getattr(args, flag) for flag, field in PRF_FLAGS.items() if getattr(args, flag) is not None}
    if given and not args.prf:
        raise ValueError(f"--{next(f for f in PRF_FLAGS if getattr(args, f) is not None).replace('_', '-')} needs --prf")
    if not args.prf:
        return None
    if not given:
        return True
    from lsr.search.searcher import PrfOptions

    _in_flags(PrfOptions(**given).check, {f"PRF {field}": f"--{flag.replace('_', '-')}" for flag, field in PRF_FLAGS.items()})
    if not defaults:
        return given
    from lsr.search.searcher import check_after_weight

    chosen = replace(defaults, **given)
    if "after_weight" in given and "interpolate" not in given:  # the collection's: an untuned one's is before
        check_after_weight(chosen, "--prf-after-weight")
    return chosen
