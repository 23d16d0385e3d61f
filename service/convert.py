"""Translation between the Searcher's Python types and the lsr.v1 messages, both directions.

Client and server share this module, so a SearchResult that crosses the wire comes back as the
same SearchResult an in-process Searcher returns. Enum values the proto does not know (a newer
client, a hand-built request) are rejected here with the list of accepted names.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

from lsr.encode.texts import check_utf8
from lsr.search.searcher import (AUTO, HybridOptions, PrfOptions, ScoredHit, SearchResult, check_after_weight,
                                 check_options, dense_vector)
from lsr.service import search_pb2 as pb

DEFAULT_K = 10
NO_RETRY = "lsr-retry"  # trailing metadata key of a failed call: "no" where the same request can only fail again
TIMING_FIELDS = [f.name for f in pb.Timings.DESCRIPTOR.fields]  # every stage, and "total"
_TIMING_FIELDS = [name for name in TIMING_FIELDS if name != "total"]  # seconds in SearchResult.timings

_MODES = {pb.MODE_UNSPECIFIED: "sparse", pb.SPARSE: "sparse", pb.DENSE: "dense", pb.HYBRID: "hybrid", pb.BM25: "bm25",
          pb.AUTO: AUTO}
_NORMALIZATIONS = {
    pb.HybridOptions.NORMALIZATION_UNSPECIFIED: "min_max",
    pb.HybridOptions.MIN_MAX: "min_max",
    pb.HybridOptions.L2: "l2",
    pb.HybridOptions.Z_SCORE: "z_score",
    pb.HybridOptions.RRF: "rrf",
}
_COMBINATIONS = {
    pb.HybridOptions.COMBINATION_UNSPECIFIED: "arithmetic_mean",
    pb.HybridOptions.ARITHMETIC_MEAN: "arithmetic_mean",
    pb.HybridOptions.GEOMETRIC_MEAN: "geometric_mean",
    pb.HybridOptions.HARMONIC_MEAN: "harmonic_mean",
}
_INTERPOLATIONS = {
    pb.PrfOptions.INTERPOLATE_UNSPECIFIED: "before",
    pb.PrfOptions.BEFORE: "before",
    pb.PrfOptions.AFTER: "after",
    pb.PrfOptions.BOTH: "both",
    pb.PrfOptions.NONE: "none",
}


def _lookup(table: dict[int, str], value: int, what: str) -> str:
    if value not in table:
        names = ", ".join(sorted(set(table.values())))
        raise ValueError(f"unknown {what} {value}; use one of: {names}")
    return table[value]


def _enum_value(table: dict[int, str], name: str, what: str) -> int:
    for value, known in table.items():
        if value and known == str(name).lower():
            return value
    raise ValueError(f"unknown {what} {name!r}; use one of: {', '.join(sorted(set(table.values())))}")


# ---------------------------------------------------------------------------------------- server side
def k_from_proto(k: int) -> int:
    """0 is proto3's 'unset': the default of 10. The Searcher checks the range."""
    return DEFAULT_K if k == 0 else int(k)


def mode_from_proto(mode: int) -> str:
    return _lookup(_MODES, mode, "mode")


def hybrid_from_proto(msg: pb.HybridOptions) -> HybridOptions:
    """Unset fields (proto3 zero values) keep the Searcher's defaults."""
    normalization = _lookup(_NORMALIZATIONS, msg.normalization, "normalization")
    options = {}
    if msg.normalization:
        options["normalization"] = normalization
    if msg.HasField("sparse_weight"):
        options["sparse_weight"] = msg.sparse_weight
    if msg.candidates:
        options["candidates"] = msg.candidates
    for name in ("dense_weight", "bm25_weight"):
        if msg.HasField(name):
            options[name] = getattr(msg, name)
    if msg.rrf_k:
        options["rrf_k"] = msg.rrf_k
    combination = _lookup(_COMBINATIONS, msg.combination, "combination")
    if msg.combination:
        options["combination"] = combination
    return HybridOptions(**options)


def prf_from_proto(msg: pb.PrfOptions, defaults: PrfOptions | None = None) -> PrfOptions | None:
    """Set fields override ``defaults`` (the collection's stored PRF settings, else PrfOptions()); None unless
    ``enabled``. Set fields are checked either way: a NaN weight passed when PRF was off, and an unknown
    interpolation did not."""
    options = {}
    if msg.interpolate:
        options["interpolate"] = _lookup(_INTERPOLATIONS, msg.interpolate, "PRF interpolation")
    if msg.feedback_docs:
        options["feedback_docs"] = msg.feedback_docs
    for name in ("weight", "max_terms", "after_weight", "dense_weight", "min_idf"):
        if msg.HasField(name):
            options[name] = getattr(msg, name)
    checked = replace(defaults or PrfOptions(), **options)
    checked.check()
    if msg.enabled and msg.HasField("after_weight") and not msg.interpolate:  # set alone: the collection's rules
        check_after_weight(checked, "prf.after_weight")
    return checked if msg.enabled else None


def size_in_batch(message: pb.SearchResponse) -> int:
    """Bytes ``message`` adds to a SearchBatchResponse: its own, its field tag and its length prefix (gRPC's size limit
    counts them; summing ``ByteSize()`` alone let a batch pass the server's check and fail gRPC's)."""
    size = message.ByteSize()
    return 1 + max(1, -(-size.bit_length() // 7)) + size


def result_to_proto(result: SearchResult, *, request_id: str, total_ms: float = 0.0) -> pb.SearchResponse:
    """Filled in place (``hits.add``, field assignment): about a third of the cost of nested constructors,
    which matters at c=1 where every request pays it."""
    response = pb.SearchResponse(index_version=result.index_version, truncated=result.truncated, request_id=request_id,
                                 partial=result.partial, shards_answered=result.shards_answered,
                                 shards_missing=result.shards_missing)
    timings = response.timings
    timings.total = total_ms
    for name in _TIMING_FIELDS:
        setattr(timings, name, 1000.0 * result.timings.get(name, 0.0))
    add = response.hits.add
    for hit in result.hits:
        out = add(doc_id=hit.doc_id, score=hit.score, text=hit.text or "")
        if hit.sparse_score is not None:
            out.sparse_score = hit.sparse_score
        if hit.dense_score is not None:
            out.dense_score = hit.dense_score
        if hit.bm25_score is not None:
            out.bm25_score = hit.bm25_score
        if hit.explanation:
            out.explanation.extend(pb.TermContribution(term=term, weight=weight) for term, weight in hit.explanation)
    return response


# ---------------------------------------------------------------------------------------- client side
def options_to_proto(
    k: int, mode: str, hybrid: HybridOptions | None, prf: PrfOptions | Mapping | bool | None, bound_factor: float = 1.0
) -> dict:
    """Fields shared by SearchRequest and SearchBatchRequest, checked as the Searcher checks them: k=0 would be
    proto3's "unset" (10 hits), and a bad option is one ValueError here rather than a server round trip. ``prf`` may
    be a mapping of PrfOptions fields: only those are sent, and the server's stored PRF settings give the rest."""
    check_options(k, mode, hybrid, replace(PrfOptions(), **prf) if isinstance(prf, Mapping) else prf, bound_factor)
    fields = {"k": k, "mode": _enum_value(_MODES, mode, "mode"), "bound_factor": float(bound_factor)}
    if hybrid is not None:
        fields["hybrid"] = pb.HybridOptions(
            normalization=_enum_value(_NORMALIZATIONS, hybrid.normalization, "normalization"),
            sparse_weight=hybrid.sparse_weight, candidates=hybrid.candidates, dense_weight=hybrid.dense_weight,
            bm25_weight=hybrid.bm25_weight, rrf_k=hybrid.rrf_k,
            combination=_enum_value(_COMBINATIONS, hybrid.combination, "combination"),
        )
    if prf is True:  # PRF with the server's stored defaults
        fields["prf"] = pb.PrfOptions(enabled=True)
    elif isinstance(prf, Mapping):  # these settings, over the server's stored defaults
        fields["prf"] = pb.PrfOptions(enabled=True, **{
            name: _enum_value(_INTERPOLATIONS, value, "PRF interpolation") if name == "interpolate" else value
            for name, value in prf.items()})
    elif prf:
        fields["prf"] = pb.PrfOptions(
            enabled=True, feedback_docs=prf.feedback_docs, weight=prf.weight, max_terms=prf.max_terms,
            interpolate=_enum_value(_INTERPOLATIONS, prf.interpolate, "PRF interpolation"),
            after_weight=prf.after_weight, dense_weight=prf.dense_beta(), min_idf=prf.min_idf,  # every field set:
            # an unset dense β took the server's stored (tuned) one, where PrfOptions' None means "as weight"
        )
    return fields


def request_to_proto(
    text: str | None, sparse: Mapping[str, float] | None, dense: Sequence[float] | None, **options
) -> pb.SearchRequest:
    include_text, explain = options.pop("include_text", False), options.pop("explain", False)
    if text is not None:  # protobuf's bare UnicodeEncodeError or "bad argument type" named no field
        if not isinstance(text, str):
            raise TypeError(f"text must be a str (the query), got {type(text).__name__}")
        check_utf8(text, "text")
    bad = next((key for key in (sparse or {}) if not isinstance(key, str)), None)
    if bad is not None:  # protobuf said only "bad argument type for built-in operation"
        raise TypeError(f"a sparse query sent to a server maps tokens (str) to weights, got the key {bad!r}")
    return pb.SearchRequest(
        text=text or "", sparse=dict(sparse or {}), dense=dense_vector(dense).tolist() if dense is not None else [],
        include_text=include_text, explain=explain, **options_to_proto(**options),
    )


def result_from_proto(msg: pb.SearchResponse) -> SearchResult:
    """A SearchResult as the server computed it; timings in seconds like the in-process ones, of the stages that ran
    (proto3 sends every field: a bm25 search's footer listed "sparse 0.0 ms, dense 0.0 ms, prf 0.0 ms")."""
    hits = [
        ScoredHit(
            hit.doc_id, hit.score,
            hit.sparse_score if hit.HasField("sparse_score") else None,
            hit.dense_score if hit.HasField("dense_score") else None,
            hit.text or None,
            [(term.term, term.weight) for term in hit.explanation],
            hit.bm25_score if hit.HasField("bm25_score") else None,
        )
        for hit in msg.hits
    ]
    timings = msg.timings
    return SearchResult(hits=hits, timings={name: getattr(timings, name) / 1000.0 for name in TIMING_FIELDS
                                                  if getattr(timings, name) or name == "total"},
                        truncated=msg.truncated, shards_answered=tuple(msg.shards_answered),
                        shards_missing=tuple(msg.shards_missing), index_version=msg.index_version)
