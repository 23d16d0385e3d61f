"""grpc.health.v1 for ``lsr serve``: Check, List and Watch, with no send made under a lock that gRPC's polling
thread may wait for.

grpcio-health-checking's ``HealthServicer`` sends a Watch stream's first status, and every change, while it holds
the lock that a cancelled stream's close callback takes on gRPC's one polling thread; a send waits for that thread.
Watch streams opened and cancelled one after another (a load balancer's health checks) wedged the whole server
within a few hundred, every call then timed out, and SIGTERM hung in the drain (grpc/grpc#43403). Here a close
callback only drops the stream from a registry whose lock is never held across a send.
"""

from __future__ import annotations

import threading
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_Send = Callable[[health_pb2.HealthCheckResponse | None], None]


class Health(health_pb2_grpc.HealthServicer):
    """Serving statuses by service name ("" is the whole server), and the Watch streams told of each change."""

    def __init__(self) -> None:
        self._statuses = {"": health_pb2.HealthCheckResponse.SERVING}
        self._watchers: dict[str, set[_Send]] = {}
        self._registry = threading.Lock()  # statuses and watchers; held for dict updates only, never across a send
        self._sending = threading.Lock()  # one change (or first status) sent at a time: each stream sees them in order
        self._shutting_down = False

    def Check(self, request, context):
        with self._registry:
            status = self._statuses.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r} here")
        return health_pb2.HealthCheckResponse(status=status)

    def List(self, request, context):
        with self._registry:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()})

    def Watch(self, request, context, send_response_callback: _Send):
        """The current status now, then each change, until the caller cancels (gRPC's non-blocking form: no pool
        thread is held for the stream's life)."""
        name = request.service
        with self._sending:
            with self._registry:
                status = self._statuses.get(name, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                self._watchers.setdefault(name, set()).add(send_response_callback)
            if not context.add_callback(lambda: self._forget(name, send_response_callback)):  # on the polling thread
                self._forget(name, send_response_callback)  # the call had ended already
                return
            send_response_callback(health_pb2.HealthCheckResponse(status=status))

    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]

    def _forget(self, name: str, send: _Send) -> None:
        with self._registry:
            watchers = self._watchers.get(name, set())
            watchers.discard(send)
            if not watchers:  # Watch streams of made-up service names kept an empty set each
                self._watchers.pop(name, None)

    def set(self, service: str, status: int) -> None:
        """Give ``service`` this status and tell its watchers; ignored once shutting down."""
        with self._sending:
            self._change(service, status)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: later ``set`` calls are ignored."""
        with self._sending:
            with self._registry:
                names = list(self._statuses)
            for name in names:
                self._change(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            self._shutting_down = True

    def _change(self, service: str, status: int) -> None:
        """``set``'s work, with ``_sending`` held."""
        with self._registry:
            if self._shutting_down:
                return
            self._statuses[service] = status
            watchers = list(self._watchers.get(service, ()))
        for send in watchers:
            send(health_pb2.HealthCheckResponse(status=status))
