"""gRPC search service (lsr.v1.SearchService): server, servicer, micro-batcher and Python client.

``Client`` is imported lazily so ``lsr.service.codegen`` and the stubs load without the model stack.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as in lsr/__init__.py: no typing import at run time

if TYPE_CHECKING:
    from lsr.service.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> type:
    if name == "Client":
        from lsr.service.client import Client

        return Client
    raise AttributeError(f"module 'lsr.service' has no attribute {name!r}")
