"""Stage 4, evaluate: BEIR datasets → runs → metrics → a report.

- ``datasets``: find (local, cache, download) and load a BEIR dataset
- ``backends``: turn queries into a run (bm25s, in-process Searcher, gRPC endpoint, brute force)
- ``metrics``: pytrec_eval scoring
- ``tuning``: fusion and PRF settings chosen on train/dev qrels
- ``beir``: the whole ``lsr beir`` run
- ``report``: results.json, results.md and the nDCG@10 chart
"""
