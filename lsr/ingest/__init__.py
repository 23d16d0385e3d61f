"""Stage 2, ingest: a corpus → a collection folder on disk.

- ``corpus``: readers for BEIR folders/archives, JSONL, Parquet and CSV (a new reader goes here)
- ``beir_source``: member access inside a BEIR folder, .zip or .tar.gz
- ``indexing``: the resumable bulk pipeline behind ``lsr index``
- ``sharding`` / ``sharded_build``: the shard of a document id and the shard map; ``--shards N`` builds with global statistics
- ``ray_engine``: ``--engine ray``, Ray Data encoder actors writing the same bytes as one process
- ``layout``: the folder format (lsr.json, vector/doc/embedding shards, per-file crc32s)
- ``collection``: an opened collection: pinned versions for readers, atomic writes across stores
- ``journal``: the write-ahead journal of upserts and deletes, replayed at open
- ``journal_fold`` / ``written_parts``: the journal's records folded into Parquet parts after a save, so opens and memory
  follow the writes since the last fold
- ``docstore``: texts by doc id (build parts, written parts, journaled writes)
- ``verify`` / ``repair``: ``lsr verify`` (every file, store agreement) and ``lsr repair`` (rebuild the indexes)
"""
