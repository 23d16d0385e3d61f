from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    SPARSE: _ClassVar[Mode]
    DENSE: _ClassVar[Mode]
    HYBRID: _ClassVar[Mode]
    BM25: _ClassVar[Mode]
    AUTO: _ClassVar[Mode]
MODE_UNSPECIFIED: Mode
SPARSE: Mode
DENSE: Mode
HYBRID: Mode
BM25: Mode
AUTO: Mode

class HybridOptions(_message.Message):
    __slots__ = ("normalization", "sparse_weight", "candidates", "dense_weight", "bm25_weight", "rrf_k", "combination")
    class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NORMALIZATION_UNSPECIFIED: _ClassVar[HybridOptions.Normalization]
        MIN_MAX: _ClassVar[HybridOptions.Normalization]
        L2: _ClassVar[HybridOptions.Normalization]
        Z_SCORE: _ClassVar[HybridOptions.Normalization]
        RRF: _ClassVar[HybridOptions.Normalization]
    NORMALIZATION_UNSPECIFIED: HybridOptions.Normalization
    MIN_MAX: HybridOptions.Normalization
    L2: HybridOptions.Normalization
    Z_SCORE: HybridOptions.Normalization
    RRF: HybridOptions.Normalization
    class Combination(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        COMBINATION_UNSPECIFIED: _ClassVar[HybridOptions.Combination]
        ARITHMETIC_MEAN: _ClassVar[HybridOptions.Combination]
        GEOMETRIC_MEAN: _ClassVar[HybridOptions.Combination]
        HARMONIC_MEAN: _ClassVar[HybridOptions.Combination]
    COMBINATION_UNSPECIFIED: HybridOptions.Combination
    ARITHMETIC_MEAN: HybridOptions.Combination
    GEOMETRIC_MEAN: HybridOptions.Combination
    HARMONIC_MEAN: HybridOptions.Combination
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    SPARSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BM25_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    COMBINATION_FIELD_NUMBER: _ClassVar[int]
    normalization: HybridOptions.Normalization
    sparse_weight: float
    candidates: int
    dense_weight: float
    bm25_weight: float
    rrf_k: int
    combination: HybridOptions.Combination
    def __init__(self, normalization: _Optional[_Union[HybridOptions.Normalization, str]] = ..., sparse_weight: _Optional[float] = ..., candidates: _Optional[int] = ..., dense_weight: _Optional[float] = ..., bm25_weight: _Optional[float] = ..., rrf_k: _Optional[int] = ..., combination: _Optional[_Union[HybridOptions.Combination, str]] = ...) -> None: ...

class PrfOptions(_message.Message):
    __slots__ = ("enabled", "feedback_docs", "weight", "max_terms", "interpolate", "after_weight", "dense_weight", "min_idf")
    class Interpolate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        INTERPOLATE_UNSPECIFIED: _ClassVar[PrfOptions.Interpolate]
        BEFORE: _ClassVar[PrfOptions.Interpolate]
        AFTER: _ClassVar[PrfOptions.Interpolate]
        BOTH: _ClassVar[PrfOptions.Interpolate]
        NONE: _ClassVar[PrfOptions.Interpolate]
    INTERPOLATE_UNSPECIFIED: PrfOptions.Interpolate
    BEFORE: PrfOptions.Interpolate
    AFTER: PrfOptions.Interpolate
    BOTH: PrfOptions.Interpolate
    NONE: PrfOptions.Interpolate
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_DOCS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_TERMS_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATE_FIELD_NUMBER: _ClassVar[int]
    AFTER_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DENSE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MIN_IDF_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    feedback_docs: int
    weight: float
    max_terms: int
    interpolate: PrfOptions.Interpolate
    after_weight: float
    dense_weight: float
    min_idf: float
    def __init__(self, enabled: _Optional[bool] = ..., feedback_docs: _Optional[int] = ..., weight: _Optional[float] = ..., max_terms: _Optional[int] = ..., interpolate: _Optional[_Union[PrfOptions.Interpolate, str]] = ..., after_weight: _Optional[float] = ..., dense_weight: _Optional[float] = ..., min_idf: _Optional[float] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("text", "sparse", "dense", "k", "mode", "hybrid", "prf", "include_text", "explain", "bound_factor")
    class SparseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    PRF_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    BOUND_FACTOR_FIELD_NUMBER: _ClassVar[int]
    text: str
    sparse: _containers.ScalarMap[str, float]
    dense: _containers.RepeatedScalarFieldContainer[float]
    k: int
    mode: Mode
    hybrid: HybridOptions
    prf: PrfOptions
    include_text: bool
    explain: bool
    bound_factor: float
    def __init__(self, text: _Optional[str] = ..., sparse: _Optional[_Mapping[str, float]] = ..., dense: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., hybrid: _Optional[_Union[HybridOptions, _Mapping]] = ..., prf: _Optional[_Union[PrfOptions, _Mapping]] = ..., include_text: _Optional[bool] = ..., explain: _Optional[bool] = ..., bound_factor: _Optional[float] = ...) -> None: ...

class TermContribution(_message.Message):
    __slots__ = ("term", "weight")
    TERM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    term: str
    weight: float
    def __init__(self, term: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("doc_id", "score", "sparse_score", "dense_score", "bm25_score", "text", "explanation")
    DOC_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    DENSE_SCORE_FIELD_NUMBER: _ClassVar[int]
    BM25_SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    doc_id: str
    score: float
    sparse_score: float
    dense_score: float
    bm25_score: float
    text: str
    explanation: _containers.RepeatedCompositeFieldContainer[TermContribution]
    def __init__(self, doc_id: _Optional[str] = ..., score: _Optional[float] = ..., sparse_score: _Optional[float] = ..., dense_score: _Optional[float] = ..., bm25_score: _Optional[float] = ..., text: _Optional[str] = ..., explanation: _Optional[_Iterable[_Union[TermContribution, _Mapping]]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("encode", "sparse", "dense", "fuse", "prf", "queue", "total", "bm25")
    ENCODE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    FUSE_FIELD_NUMBER: _ClassVar[int]
    PRF_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BM25_FIELD_NUMBER: _ClassVar[int]
    encode: float
    sparse: float
    dense: float
    fuse: float
    prf: float
    queue: float
    total: float
    bm25: float
    def __init__(self, encode: _Optional[float] = ..., sparse: _Optional[float] = ..., dense: _Optional[float] = ..., fuse: _Optional[float] = ..., prf: _Optional[float] = ..., queue: _Optional[float] = ..., total: _Optional[float] = ..., bm25: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "timings", "index_version", "truncated", "request_id", "partial", "shards_answered", "shards_missing")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    SHARDS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    SHARDS_MISSING_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    timings: Timings
    index_version: str
    truncated: bool
    request_id: str
    partial: bool
    shards_answered: _containers.RepeatedScalarFieldContainer[str]
    shards_missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., index_version: _Optional[str] = ..., truncated: _Optional[bool] = ..., request_id: _Optional[str] = ..., partial: _Optional[bool] = ..., shards_answered: _Optional[_Iterable[str]] = ..., shards_missing: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("texts", "k", "mode", "hybrid", "prf", "include_text", "explain", "bound_factor")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    HYBRID_FIELD_NUMBER: _ClassVar[int]
    PRF_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    BOUND_FACTOR_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    k: int
    mode: Mode
    hybrid: HybridOptions
    prf: PrfOptions
    include_text: bool
    explain: bool
    bound_factor: float
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., hybrid: _Optional[_Union[HybridOptions, _Mapping]] = ..., prf: _Optional[_Union[PrfOptions, _Mapping]] = ..., include_text: _Optional[bool] = ..., explain: _Optional[bool] = ..., bound_factor: _Optional[float] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("documents", "allow_empty_documents", "last")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_EMPTY_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    allow_empty_documents: bool
    last: bool
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., allow_empty_documents: _Optional[bool] = ..., last: _Optional[bool] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "index_version")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    index_version: str
    def __init__(self, upserted: _Optional[int] = ..., index_version: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "not_found", "index_version")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    index_version: str
    def __init__(self, deleted: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ..., index_version: _Optional[str] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("num_docs", "index_version", "model", "query_encoder", "dense_model", "dense_dim", "requests", "abandoned", "uptime_seconds", "details", "in_flight")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NUM_DOCS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_ENCODER_FIELD_NUMBER: _ClassVar[int]
    DENSE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DENSE_DIM_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    num_docs: int
    index_version: str
    model: str
    query_encoder: str
    dense_model: str
    dense_dim: int
    requests: int
    abandoned: int
    uptime_seconds: float
    details: _containers.ScalarMap[str, str]
    in_flight: int
    def __init__(self, num_docs: _Optional[int] = ..., index_version: _Optional[str] = ..., model: _Optional[str] = ..., query_encoder: _Optional[str] = ..., dense_model: _Optional[str] = ..., dense_dim: _Optional[int] = ..., requests: _Optional[int] = ..., abandoned: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., details: _Optional[_Mapping[str, str]] = ..., in_flight: _Optional[int] = ...) -> None: ...
