"""Stage 2, ingest: a corpus → a collection folder on disk.

- ``corpus``: readers for BEIR folders/archives, JSONL, Parquet and CSV (a new reader goes here)
- ``beir_source``: member access inside a BEIR folder, .zip or .tar.gz
- ``indexing``: the resumable bulk pipeline behind ``lsr index``
- ``collection``: the folder format (manifest, vector shards, doc store, checksums)
"""
