"""Stage 3, search: a query → hits, the same for the CLI, BEIR and the gRPC service.

- ``searcher``: Searcher, the one place a query becomes hits
- ``fusion``: score normalisation and interpolation of two rankings
- ``prf``: pseudo-relevance feedback (Rocchio, Vector-PRF)
- ``dense_index``: the faiss index over dense embeddings

The sparse inverted index itself is ``lsr.index`` (the top-level ``index/`` folder).
"""
