"""``--device`` and ``--dtype`` for every verb that runs a model, checked before anything slow loads, and the
``--query-encoder`` of the verbs that search a collection."""

from __future__ import annotations

import argparse

DEVICE_HELP = "where models run: auto (a CUDA GPU when torch sees one, else cpu), cpu, cuda or cuda:N (default auto)"
DTYPE_HELP = ("model precision: auto (bf16 on a GPU that has it, fp16 on older GPUs, fp32 on CPU; but a collection's "
              "documents get the dense model in bf16 on a CPU with native bf16, AVX512-BF16 or AMX: twice as fast), "
              "fp32, bf16 or fp16")


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)
    from lsr.search.models import DTYPE_CHOICES

    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)


def add_query_encoder_argument(p: argparse.ArgumentParser) -> None:
    from lsr.search.searcher import QUERY_ENCODERS

    p.add_argument("--query-encoder", choices=QUERY_ENCODERS, default="auto",
                   help="how text queries become sparse vectors: splade (the collection's model), inference-free (IDF "
                        "weights of the query's tokens, no model), or auto (default: inference-free when the model "
                        "folder ships an idf.json, as `lsr train --inference-free` writes, else splade)")


def device_options(args: argparse.Namespace, *, concrete_dtype: bool = False) -> dict[str, str]:
    """{"device": "cpu" | "cuda:N", "dtype": ...}: the device resolved now, so a missing GPU is a ValueError (one
    line, exit 2) before any model loads. An "auto" dtype is left for each encoder to resolve (``resolve_dtype``:
    a bulk build's dense model may take bf16 where SPLADE keeps fp32) unless ``concrete_dtype`` (one SPLADE model)."""
    from lsr.encode.inputs import dtype_name, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return {"device": str(device), "dtype": dtype_name(resolve_dtype(args.dtype, device)) if concrete_dtype else args.dtype}


def lazy_device_options(args: argparse.Namespace) -> dict[str, str]:
    """``device_options`` for a verb that may run no model (a BM25 search): auto and cpu are left for the models to
    resolve when they load, so torch is imported only if one does; a GPU asked for is still checked now."""
    if args.device in ("auto", "cpu"):
        return {"device": args.device, "dtype": args.dtype}
    return device_options(args)
