"""gRPC search service (filled in by the service issue)."""
