"""Training stage: fine-tune SPLADE encoders (``lsr train``).

- ``data``: training examples from a BEIR train split (BM25-mined hard negatives) or a JSONL file
- ``losses``: contrastive (in-batch + hard negatives), FLOPS with quadratic warm-up, IDF-aware FLOPS, margin-MSE
- ``model``: a SpladeEncoder whose LM head and pooling keep their gradients; the IDF query side of the inference-free variant
- ``export``: the trained model folder (Hugging Face + sentence-transformers' SparseEncoder layout)
- ``checkpoint``: resumable training state written atomically
- ``config``: the settings that decide the trained weights
- ``loop``: the optimisation loop (AdamW, warm-up + linear decay, accumulation, clipping, progress)
- ``evaluate``: sparse nDCG@10 and document non-zeros before/after, on a BEIR split
"""
