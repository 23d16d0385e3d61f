"""Write a trained encoder as a model folder every loader understands.

The folder is a plain Hugging Face MLM (config, weights, tokenizer) for ``SpladeEncoder.from_pretrained``,
``lsr index --model`` and ``lsr beir --model``, plus sentence-transformers' SparseEncoder module files so
``SparseEncoder(OUT)`` builds the same vectors without any code of ours: the MLM transformer at the root, then
``1_SpladePooling`` (the encoder's pooling and activation; its prompts in ``config_sentence_transformers.json``). An inference-free model also carries its IDF table: ``idf.json`` for
``InferenceFreeQueryEncoder``, and a sentence-transformers Router whose query route is a ``SparseStaticEmbedding``
of the same weights and whose document route is the root's MLM (module path ``.``, so the weights are stored once).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lsr.encode.models import transformers_quiet
from lsr.encode.splade import IDF_TABLE, DecoderSpladeEncoder, default_query_length, output_projection_attached
from lsr.files import fsync_dir, write_json_atomic
from lsr.train.model import TrainableSplade

ST_MLM = "sentence_transformers.sparse_encoder.modules.mlm_transformer.MLMTransformer"
ST_POOLING = "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"
ST_STATIC = "sentence_transformers.sparse_encoder.modules.sparse_static_embedding.SparseStaticEmbedding"
ST_ROUTER = "sentence_transformers.base.modules.router.Router"
ST_MODULES = [{"idx": 0, "name": "0", "path": "", "type": ST_MLM},
              {"idx": 1, "name": "1", "path": "1_SpladePooling", "type": ST_POOLING}]
ST_ROUTED = [{"idx": 0, "name": "0", "path": "", "type": ST_ROUTER}]
QUERY_MODULE, POOLING_MODULE = "query_0_SparseStaticEmbedding", "document_1_SpladePooling"
STAGING = ".model.partial"  # where the folder is written before it is moved into OUT


def save_model_folder(trainable: TrainableSplade, out: Path) -> None:
    """Weights, tokenizer, the IDF table (inference-free) and, for MLMs, the SparseEncoder description into ``out``.

    Written whole into ``out/STAGING`` first, then moved in with ``config.json`` last: a kill -9 while transformers
    wrote the folder left config and weights beside a tokenizer_config.json without its vocabulary, a folder that
    loaded without error and made every word [UNK]. Cut short now, ``out`` has no config.json, which no loader takes.
    """
    from safetensors import SafetensorError

    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # a write a kill cut short
    try:
        _write_model_files(trainable, staging)
    except SafetensorError as exc:  # a full disk: not an OSError, so it was a traceback
        raise OSError(f"could not write the model into {staging}: {exc}; free space and run the same command with "
                      "--resume (the last checkpoint is kept)") from None
    _publish(staging, out)


def _publish(staging: Path, out: Path) -> None:
    """Each file of ``staging`` synced and readable as the umask allows (transformers leaves the weights 0600, which
    a service running as another user could not read), then each entry renamed into ``out``, config.json last.

    A folder already in ``out`` (a ``--max-minutes`` run resumed, exported again) loses its config.json first: a kill
    between two renames left the old config.json beside some new files, a mix that loaded without error."""
    (out / "config.json").unlink(missing_ok=True)
    fsync_dir(out)
    umask = os.umask(0)
    os.umask(umask)
    for path in staging.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
        target = out / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
        fsync_dir(out)
    staging.rmdir()
    fsync_dir(out)


def _write_model_files(trainable: TrainableSplade, out: Path) -> None:
    encoder = trainable.encoder
    out.mkdir(parents=True, exist_ok=True)
    with output_projection_attached(trainable.model) as model, transformers_quiet():
        model.save_pretrained(out)
    encoder.tokenizer.save_pretrained(out)
    if trainable.idf is not None:  # the inference-free query side: InferenceFreeQueryEncoder reads this table
        idf = trainable.search_idf()
        write_json_atomic(out / IDF_TABLE, {encoder.vocab[i]: float(idf[i]) for i in idf.nonzero()[0]})
    # SparseEncoder truncates where the encoder did at inference (the start's length: 256, or fewer where its folder or
    # its positions say), not at the training length; it lowercases where the start did (it wrote 256 and false). A
    # decoder's folder keeps them too: its trained folder lost them, and search read other text than training did.
    write_json_atomic(out / "sentence_bert_config.json", {"max_seq_length": encoder.max_length,
                                                          "do_lower_case": encoder.lowercase})
    decoder = isinstance(encoder, DecoderSpladeEncoder)  # echo pooling over a causal LM: no SparseEncoder module
    write_json_atomic(out / "config_sentence_transformers.json", {
        **({} if decoder else {"model_type": "SparseEncoder"}), "default_prompt_name": None,
        "prompts": {"query": encoder.prompts.query, "document": encoder.prompts.document}, "similarity_fn_name": "dot",
    })
    if decoder:
        return  # DecoderSpladeEncoder loads the folder
    pooling = {"pooling_strategy": encoder.pooling, "activation_function": encoder.activation,
               "embedding_dimension": encoder.vocab_size}
    if trainable.idf is None:
        write_json_atomic(out / "modules.json", ST_MODULES)
        write_json_atomic(out / "1_SpladePooling" / "config.json", pooling)
        return
    _save_static_query_module(trainable, out / QUERY_MODULE)
    write_json_atomic(out / POOLING_MODULE / "config.json", pooling)
    write_json_atomic(out / "router_config.json", {
        "types": {QUERY_MODULE: ST_STATIC, ".": ST_MLM, POOLING_MODULE: ST_POOLING},
        "structure": {"query": [QUERY_MODULE], "document": [".", POOLING_MODULE]},
        "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}},
    })
    write_json_atomic(out / "modules.json", ST_ROUTED)


def _save_static_query_module(trainable: TrainableSplade, folder: Path) -> None:
    """sentence-transformers' SparseStaticEmbedding: a weight per vocabulary id (the IDF table) and its tokenizer."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    trainable.encoder.tokenizer.save_pretrained(folder)
    # SparseStaticEmbedding cuts a query at its tokenizer's limit: 512 where InferenceFreeQueryEncoder reads the
    # folder's 256 gave a longer query more terms
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    limit = default_query_length(str(folder.parent), trainable.encoder.tokenizer)
    write_json_atomic(folder / "tokenizer_config.json", {**config, "model_max_length": limit})
    write_json_atomic(folder / "config.json", {"frozen": True})
    save_file({"weight": torch.from_numpy(trainable.search_idf())}, str(folder / "model.safetensors"))
