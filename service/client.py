"""``lsr.service.Client``: the Python face of lsr.v1.SearchService.

Results come back as the same ``SearchResult`` an in-process ``Searcher`` returns, so callers
(``lsr query``, ``lsr beir --endpoint``) do not care which side of the wire did the work.
Server errors surface as ``grpc.RpcError`` with the server's status code and message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lsr.encode.checks import check_whole
from lsr.encode.texts import check_texts, check_utf8
from lsr.files import MachineStateError
from lsr.search.searcher import HybridOptions, PrfOptions, SearchResult, check_switches, query_list
from lsr.service import search_pb2 as pb
from lsr.service import search_pb2_grpc
from lsr.service.convert import NO_RETRY, options_to_proto, request_to_proto, result_from_proto
from lsr.sparse import id_list, is_real

_MiB = 1024 * 1024
DEFAULT_PORT = 50051  # what `lsr serve` listens on unless told otherwise
MAX_TIMEOUT_S = 1e8  # about 3 years; gRPC counts a deadline in int64 nanoseconds, which 1e10 s passed
CONNECT_TIMEOUT = 5.0  # seconds the CLI verbs give an endpoint to answer before they give up
_HITS_PER_RESPONSE = 50_000  # ~2 MiB of hits per SearchBatch response
_UPSERT_MESSAGE_BYTES = 512 << 10  # ids + texts per Upsert message: under `lsr serve --max-message-mb 1`


class EndpointUnavailable(MachineStateError):
    """No server answered at the endpoint in time (down, wrong address, or still loading)."""


# Codes that say the server or the network failed, not the request: the same call can work later.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED,
                             grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


def call_failed(exc: grpc.RpcError, rerun: str = "") -> RuntimeError:
    """A failed call as one line, ``CODE: the server's message``: a ``MachineStateError`` when the server or the
    network failed (the CLI exits 1: retry), a plain RuntimeError when the request was refused (exit 2: fix it).
    ``rerun``, for a write: what rerunning it does, said where the caller gave up waiting (the write may have landed
    after all; "Deadline Exceeded" alone left that unsaid)."""
    details = exc.details() or ""
    if rerun and exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        details += f"; the write may still have been applied: {rerun}"
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "CLIENT: Received message larger than max" in details:
        return RuntimeError(f"{exc.code().name}: {details}; the answer is over this client's own limit: ask for less "
                            "per call (a smaller k, no texts), or make the Client with a larger max_message_bytes")
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        # gRPC's message size limit: the same request meets it on every retry (`lsr delete --ids-file` of 400,000 ids
        # exited 1, "retry"), so it is the request to fix, as `lsr upsert` says for a document over the limit.
        return RuntimeError(f"{exc.code().name}: {details}; a retry meets the same limit: send less per call (fewer "
                            "ids, texts or hits), or start `lsr serve` with a larger --max-message-mb")
    if _metadata(exc).get(NO_RETRY) == "no":  # the server's own size limits for this request (k, texts, documents)
        return RuntimeError(f"{exc.code().name}: {details}")
    kind = MachineStateError if exc.code() in RETRYABLE_CODES else RuntimeError
    return kind(f"{exc.code().name}: {details}")


def _response_too_large(exc: grpc.RpcError) -> bool:
    """Whether a SearchBatch was refused for the size of its response (the server's limit, or gRPC's own on the
    message this client receives), which fewer texts per request avoid."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return False
    return _metadata(exc).get(NO_RETRY) == "no" or "larger than max" in (exc.details() or "")


def _metadata(exc: grpc.RpcError) -> dict[str, str]:
    """A failed call's trailing metadata (none where the call never reached a server)."""
    trailing = getattr(exc, "trailing_metadata", None)
    return dict(trailing() or ()) if callable(trailing) else {}


def token_problem(token: str) -> str | None:
    """What keeps ``token`` out of an ``authorization`` header, or None. gRPC sends only printable ASCII in metadata:
    a token with a newline or an accented letter failed every call client-side as INTERNAL "Invalid metadata" (exit 1,
    "retry", with a C-core error on stderr), and a server given one started but could be called by no client."""
    bad = next((i for i, char in enumerate(token) if not " " <= char <= "~"), None)
    if bad is None:
        return None
    return (f"holds {token[bad]!r} at character {bad}; a bearer token is printable ASCII on one line "
            "(gRPC metadata carries nothing else)")


def _utf8_len(text: str) -> int:
    """Bytes ``text`` takes on the wire (ASCII, the common case, without encoding it); 0 for a non-string, which
    protobuf refuses with its own TypeError."""
    if not isinstance(text, str):
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not is_real(timeout):  # "5" failed deep in a comparison with an int
        raise TypeError(f"the timeout must be a number of seconds or None, got {timeout!r}")
    # 0 and 1e10 both failed every call at once as DEADLINE_EXCEEDED
    if timeout is not None and not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"the timeout must be a positive number of seconds up to {MAX_TIMEOUT_S:.0e}, got {timeout} "
                         "(the Python client takes None for no deadline)")


def endpoint_address(endpoint: str) -> str:
    """``HOST[:PORT]`` as a gRPC target; a bare host means port 50051 (gRPC alone would pick 443).

    Targets with a scheme (``dns:///``, ``unix:``) and bracketed IPv6 with a port pass unchanged.
    """
    if not isinstance(endpoint, str):  # None failed as "'NoneType' object has no attribute 'strip'"
        raise TypeError(f"the endpoint must be a str HOST[:PORT], e.g. \"localhost:50051\"; got {endpoint!r}")
    endpoint = endpoint.strip()
    if not endpoint:
        raise ValueError("the endpoint is empty; give HOST:PORT, e.g. localhost:50051")
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else None
    if scheme in ("http", "https", "grpc", "grpcs"):  # no gRPC resolver: it said "no server answered", exit 1
        raise ValueError(f"the endpoint {endpoint!r} has a URL scheme; give HOST:PORT without {scheme}:// (and "
                         "--tls, or tls=, for a server with TLS)")
    if scheme is not None or endpoint.startswith("unix:"):
        return endpoint
    if endpoint.startswith("["):
        if "]" not in endpoint or not endpoint.endswith("]") and "]:" not in endpoint:  # "[::1" was dialled as is
            raise ValueError(f"the endpoint {endpoint!r} opens an IPv6 address with [ but does not close it; give "
                             "[ADDRESS]:PORT, e.g. [::1]:50051")
        address = endpoint if "]:" in endpoint else f"{endpoint}:{DEFAULT_PORT}"
    elif endpoint.count(":") > 1:  # a bare IPv6 address
        address = f"[{endpoint}]:{DEFAULT_PORT}"
    else:
        address = endpoint if ":" in endpoint else f"{endpoint}:{DEFAULT_PORT}"
    port = address.rsplit(":", 1)[1]
    if not (port.isdigit() and 1 <= int(port) <= 65535):  # gRPC only waited out the timeout on port 99999
        raise ValueError(f"the endpoint {endpoint!r} has no valid port ({port!r}); give HOST:PORT with a port in 1..65535")
    return address


class Client:
    """A channel to one server at ``HOST[:PORT]`` (port 50051 if left out).

    ``tls``: False (plain), True (system roots) or a CA certificate path.
    """

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        tls: bool | str | Path = False,
        *,
        timeout: float | None = 60.0,
        max_message_bytes: int = 64 * _MiB,
    ) -> None:
        endpoint = endpoint_address(endpoint)
        _check_timeout(timeout)
        max_message_bytes = check_whole(max_message_bytes, "max_message_bytes", 1)
        problem = token_problem(token) if token else None
        if problem is not None:
            raise ValueError(f"the auth token {problem}")
        options = [("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", max_message_bytes)]
        if tls:
            roots = None if tls is True else Path(tls).read_bytes()
            if roots is not None and b"-----BEGIN CERTIFICATE-----" not in roots:  # gRPC's core logged two lines, and
                # every call then timed out as "no server answered"
                raise ValueError(f"the TLS CA file {tls} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give "
                                 "the certificate of the authority that signed the server's")
            credentials = grpc.ssl_channel_credentials(roots)
            self._new_channel = lambda extra=(): grpc.secure_channel(endpoint, credentials, options=[*options, *extra])
        else:
            self._new_channel = lambda extra=(): grpc.insecure_channel(endpoint, options=[*options, *extra])
        self._channel = self._new_channel()
        self.endpoint = endpoint
        self.timeout = timeout
        self._tls = bool(tls)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self.last_index_version: str | None = None

    # -------------------------------------------------------------------------------- search
    def search(
        self,
        text: str | None = None,
        k: int = 10,
        *,
        sparse: Mapping[str, float] | None = None,
        dense: Sequence[float] | None = None,
        mode: str = "sparse",
        hybrid: HybridOptions | None = None,
        prf: PrfOptions | Mapping[str, Any] | bool | None = None,
        include_text: bool = False,
        explain: bool = False,
        timeout: float | None = None,
        bound_factor: float = 1.0,
    ) -> SearchResult:
        """``prf``: PrfOptions, True (the server's stored PRF settings), or a mapping of PrfOptions fields set over
        those. ``bound_factor`` > 1: the SPLADE leg searched approximately (``Searcher.search``)."""
        check_switches(explain, include_text, None)  # include_text="no" was protobuf's words, explain=1 taken
        request = request_to_proto(
            text, sparse, dense, k=k, mode=mode, hybrid=hybrid, prf=prf, include_text=include_text, explain=explain,
            bound_factor=bound_factor,
        )
        response = self._call(self._stub.Search, request, timeout)
        self.last_index_version = response.index_version
        return result_from_proto(response)

    def search_batch(
        self,
        texts: Sequence[str],
        k: int = 10,
        mode: str = "sparse",
        hybrid: HybridOptions | None = None,
        prf: PrfOptions | Mapping[str, Any] | bool | None = None,
        *,
        include_text: bool = False,
        explain: bool = False,
        chunk_size: int = 256,
        timeout: float | None = None,
        bound_factor: float = 1.0,
    ) -> list[SearchResult]:
        """Results in input order; long lists go as several requests of at most ``chunk_size`` texts,
        fewer for large k, so that each response stays a few MiB. A request whose response would pass the server's
        limit (the texts of the hits, or their explanations, count too) goes again as two halves."""
        texts = check_texts(query_list(texts))  # a None or a lone surrogate: protobuf's bare error named no text
        check_switches(explain, include_text, None)
        fields = options_to_proto(k, mode, hybrid, prf, bound_factor)
        chunk_size = min(check_whole(chunk_size, "chunk_size", 1), _HITS_PER_RESPONSE // max(1, k)) or 1
        results: list[SearchResult] = []
        pending = [list(texts[start : start + chunk_size]) for start in range(0, len(texts), chunk_size)]
        while pending:
            chunk = pending.pop(0)
            request = pb.SearchBatchRequest(texts=chunk, include_text=include_text, explain=explain, **fields)
            try:
                response = self._call(self._stub.SearchBatch, request, timeout)
            except grpc.RpcError as exc:  # 50 texts at k=1000 with their texts: 75 MiB, refused on every retry
                if len(chunk) == 1 or not _response_too_large(exc):
                    raise
                pending[:0] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]]
                continue
            results.extend(result_from_proto(r) for r in response.results)
        return results

    # -------------------------------------------------------------------------------- writes
    def upsert(self, ids: Sequence[str], texts: Sequence[str], *, allow_empty: bool = False, chunk_size: int = 64,
               timeout: float | None = None) -> int:
        """Add or replace documents; returns how many the server stored (durably, once this returns).

        They go as one stream (one atomic write) of messages of at most ``chunk_size`` documents and
        ``_UPSERT_MESSAGE_BYTES`` (a longer document alone), each under the server's request limit: 64 documents
        of 70 KB, long papers, made a 4.5 MB message that the default 4 MiB limit refused, on every retry. The final
        message is marked ``last``, so the server knows the stream whole and writes it without waiting.
        ``allow_empty``: store empty or whitespace-only texts instead of refusing them (INVALID_ARGUMENT)."""
        # Checked as Searcher.upsert checks them, before the stream opens: one str was sent as one document per
        # character; an int id or a text with a lone surrogate failed inside the request stream, which gRPC reports
        # as UNKNOWN "Exception iterating requests!" (to retry), and a None id or text went as "" (proto3's unset).
        if isinstance(texts, str):
            raise TypeError("texts must be a list of texts, one per id, not one str")
        check_whole(chunk_size, "chunk_size", 1)  # "2" failed inside the stream: UNKNOWN, which callers retry
        ids, texts = id_list(ids), list(texts)
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids but {len(texts)} texts")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] (id {ids[i]!r}) must be a str, got {type(text).__name__}")
            check_utf8(text, f"texts[{i}] (id {ids[i]!r})")

        def messages() -> Iterable[pb.UpsertRequest]:
            docs: list[pb.Document] = []
            size = 0
            for doc_id, text in zip(ids, texts):
                doc_bytes = _utf8_len(doc_id) + _utf8_len(text)
                if docs and (len(docs) >= chunk_size or size + doc_bytes > _UPSERT_MESSAGE_BYTES):
                    yield pb.UpsertRequest(documents=docs, allow_empty_documents=allow_empty)
                    docs, size = [], 0
                docs.append(pb.Document(id=doc_id, text=text))
                size += doc_bytes
            yield pb.UpsertRequest(documents=docs, allow_empty_documents=allow_empty, last=True)  # written at once

        response = self._call(self._stub.Upsert, messages(), timeout)
        self.last_index_version = response.index_version
        return int(response.upserted)

    def delete(self, ids: Sequence[str], *, timeout: float | None = None) -> list[str]:
        """Remove documents; returns the ids the server did not know (all unknown raises NOT_FOUND)."""
        ids = id_list(ids)  # as Searcher.delete: delete("ab") deleted the documents "a" and "b"
        response = self._call(self._stub.Delete, pb.DeleteRequest(ids=ids), timeout)
        self.last_index_version = response.index_version
        return list(response.not_found)

    # -------------------------------------------------------------------------------- introspection
    def stats(self, *, timeout: float | None = None) -> dict:
        response = self._call(self._stub.GetStats, pb.StatsRequest(), timeout)
        out = {field.name: getattr(response, field.name) for field in pb.StatsResponse.DESCRIPTOR.fields}
        out["details"] = dict(response.details)
        return out

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """'SERVING', 'NOT_SERVING', ... as the server's grpc.health.v1 service reports it."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the channel connects (e.g. right after starting a server); EndpointUnavailable if not in time."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self._refused_handshake()
            over = " over TLS" if self._tls else ""
            tls_hint = " with --tls-cert (a plain server never finishes a TLS handshake)" if self._tls else ""
            raise EndpointUnavailable(f"no server answered{over} at {self.endpoint} within {timeout:g} s; "
                                      f"is `lsr serve` running there{tls_hint}?") from None

    def _refused_handshake(self) -> None:
        """ValueError when the server answered but the connection failed in a way a retry cannot mend: a TLS
        handshake refused (an untrusted certificate, a name it does not hold), or a plain client at a TLS server
        (which closes the socket). Both read "no server answered" (exit 1: retry)."""
        # a channel of its own subchannels tries every address afresh: one in back-off repeats its last error, which
        # for localhost may be ::1's refusal where 127.0.0.1 refused the handshake
        with self._new_channel([("grpc.use_local_subchannel_pool", 1)]) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                return
            except grpc.RpcError as exc:
                details = exc.details() or ""
        if "WRONG_VERSION_NUMBER" in details:  # a plain server's answer to a TLS hello
            raise ValueError(f"the server at {self.endpoint} does not speak TLS (a plain `lsr serve`, without "
                             "--tls-cert): drop --tls, or start it with --tls-cert and --tls-key")
        if "hostname verification" in details.lower():  # gRPC 1.85's words, not "handshake failed": "no server"
            host = self.endpoint.rsplit(":", 1)[0].strip("[]")
            raise ValueError(f"the TLS handshake with {self.endpoint} failed (the server's certificate does not hold "
                             f"the name {host}); connect by a name its certificate holds, or give the server a "
                             "certificate for this one")
        if "handshake failed" in details.lower():
            reason = details.split("Tls handshake failed", 1)[-1].split("SSL_ERROR_SSL:")[-1].removesuffix(": OK").strip(" :()")
            raise ValueError(f"the TLS handshake with {self.endpoint} failed ({reason}); give --tls the certificate of "
                             "the authority that signed the server's, and an endpoint name that certificate holds")
        if not self._tls and details.endswith("Socket closed"):
            raise ValueError(f"the server at {self.endpoint} closed the connection at once: it serves TLS, or is not "
                             "an lsr server; add --tls (with the CA file of its certificate)")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _call(self, method, request, timeout: float | None):
        _check_timeout(timeout)  # a call's own timeout too: 0, -1 or NaN failed at once as DEADLINE_EXCEEDED ("retry")
        return method(request, timeout=timeout if timeout is not None else self.timeout, metadata=self._metadata)
