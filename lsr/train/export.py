"""Write a trained encoder as a model folder every loader understands.

The folder is a plain Hugging Face MLM (config, weights, tokenizer) for ``SpladeEncoder.from_pretrained``,
``lsr index --model`` and ``lsr beir --model``, plus sentence-transformers' SparseEncoder module files
(``modules.json``: the MLM transformer at the root, then ``1_SpladePooling``) so ``SparseEncoder(OUT)``
builds the same max-pooled log1p∘relu vectors without any code of ours.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from lsr.encode.splade import DecoderSpladeEncoder, SpladeEncoder, output_projection_attached
from lsr.files import write_json_atomic
from lsr.train.model import TrainableSplade

INFERENCE_MAX_LENGTH = inspect.signature(SpladeEncoder.from_pretrained).parameters["max_length"].default
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.sparse_encoder.modules.mlm_transformer.MLMTransformer"},
    {"idx": 1, "name": "1", "path": "1_SpladePooling",
     "type": "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"},
]


def save_model_folder(trainable: TrainableSplade, out: Path) -> None:
    """Weights, tokenizer, the IDF table (inference-free) and, for MLMs, the SparseEncoder description into ``out``."""
    encoder = trainable.encoder
    out.mkdir(parents=True, exist_ok=True)
    with output_projection_attached(trainable.model) as model:
        model.save_pretrained(out)
    encoder.tokenizer.save_pretrained(out)
    if trainable.idf is not None:  # the inference-free query side: InferenceFreeQueryEncoder reads this table
        idf = trainable.idf.cpu().numpy()
        write_json_atomic(out / "idf.json", {encoder.vocab[i]: float(idf[i]) for i in idf.nonzero()[0]})
    if isinstance(encoder, DecoderSpladeEncoder):
        return  # echo pooling over a causal LM has no SparseEncoder module: DecoderSpladeEncoder loads the folder
    write_json_atomic(out / "modules.json", ST_MODULES)
    # SparseEncoder truncates where SpladeEncoder.from_pretrained does by default, not at the training length.
    write_json_atomic(out / "sentence_bert_config.json", {"max_seq_length": INFERENCE_MAX_LENGTH, "do_lower_case": False})
    write_json_atomic(out / "config_sentence_transformers.json", {
        "model_type": "SparseEncoder", "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "dot",
    })
    write_json_atomic(out / "1_SpladePooling" / "config.json", {
        "pooling_strategy": "max", "activation_function": "relu", "embedding_dimension": encoder.vocab_size,
    })
