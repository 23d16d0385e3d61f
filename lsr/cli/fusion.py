"""``--mode`` and the hybrid fusion flags shared by `lsr search` and `lsr query`."""

from __future__ import annotations

import argparse

FUSION_HELP = """hybrid fusion: each leg with a positive weight joins (sparse, dense, bm25); min_max / l2 / z_score
normalise each list and take the weighted mean, rrf sums weight / (rrf_k + rank). With none of these
flags, the collection's tuned defaults (`lsr tune`) apply, else min_max with sparse 0.5, dense 0.5"""
FLAGS = ("normalization", "sparse_weight", "candidates", "dense_weight", "bm25_weight", "rrf_k")


def add_fusion_arguments(p: argparse.ArgumentParser) -> None:
    from lsr.search.fusion import FUSIONS, RRF_K
    from lsr.search.searcher import MODES

    p.add_argument("--mode", choices=MODES, default="sparse", help="retrieval mode (default sparse)")
    group = p.add_argument_group("hybrid fusion", FUSION_HELP)
    group.add_argument("--normalization", choices=FUSIONS, default=None, help="how lists are fused (default min_max)")
    group.add_argument("--sparse-weight", type=float, default=None, help="weight of the SPLADE list, 0..1 (default 0.5)")
    group.add_argument("--dense-weight", type=float, default=None, help="weight of the dense list, 0..1 (default 1 - sparse weight)")
    group.add_argument("--bm25-weight", type=float, default=None, help="weight of the BM25 list, 0..1 (default 0: left out)")
    group.add_argument("--rrf-k", type=int, default=None, help=f"RRF's rank constant (default {RRF_K})")
    group.add_argument("--candidates", type=int, default=None, help="candidates per list before fusion (default 100)")


def hybrid_options(args: argparse.Namespace):
    """The HybridOptions the flags describe (unset ones keep HybridOptions' defaults), or None when no flag was
    given, so the collection's tuned defaults apply."""
    from lsr.search.searcher import HybridOptions

    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    return HybridOptions(**given) if given else None
