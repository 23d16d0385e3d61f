"""Dense document encoding on CPU: our DenseEncoder vs sentence-transformers' SentenceTransformer (MiniLM).

The dense leg is most of a CPU ``lsr index`` (SciFact in fp32: 241 of its 290 encoding
seconds), so it is measured against what a user would run instead, the same way ``encode.py``
measures SPLADE: each system in its own long-lived subprocess, the same SciFact documents
(``title + " " + text``, each model's own max_seq_length, 256) in chunks, the systems taking turns,
quiet, with one core busy and with another ``lsr index`` running. Ours runs the dtype ``lsr index``
picks on this CPU (bf16 where the CPU has native bf16); SentenceTransformer runs its fp32 default
and, as a second peer, bf16. Agreement: our vectors against SentenceTransformer's fp32 ones on the
first ``--sample`` documents (cosine and max abs difference).

    python benchmarks/encode_dense.py --limit 512    # about 9 minutes on 2 cores

Writes benchmarks/results/encode_dense[_limitN].md and .json.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path

import numpy as np
import torch

from encode import (CONDITIONS, SYSTEMS, answer_chunks, machine, parse_arguments, run_systems, scifact_texts,
                    speed_ratios, table_head)
from lsr.eval.report import write_results

ST_BF16 = "sentence-transformers-bf16"  # the peer given bf16 too, as a user who knows their CPU could ask
DENSE_SYSTEMS = (*SYSTEMS, ST_BF16)


def serve_system(system: str, limit: int | None, batch_size: int, threads: int, sample: int, out: Path) -> None:
    """Child process: load, warm up, encode the chunks the parent names on stdin, save the sample's vectors."""
    torch.set_num_threads(threads)
    texts = scifact_texts(limit)
    if system == "ours":
        from lsr.encode.dense import DenseEncoder
        from lsr.ingest.indexing import IndexOptions

        dtype = IndexOptions(device="cpu").encoding()["dense_dtype"]  # what `lsr index` runs on this CPU
        encoder = DenseEncoder.from_pretrained("minilm", device="cpu", dtype=dtype)
        encode = lambda xs: encoder.encode_documents(xs, batch_size=batch_size)  # noqa: E731
    else:
        from sentence_transformers import SentenceTransformer

        from lsr.encode.models import resolve_model

        dtype = "bf16" if system == ST_BF16 else "fp32"
        kwargs = {"model_kwargs": {"torch_dtype": torch.bfloat16}} if dtype == "bf16" else {}
        st = SentenceTransformer(resolve_model("minilm"), device="cpu", **kwargs)
        encode = lambda xs: st.encode(xs, batch_size=batch_size, convert_to_numpy=True)  # noqa: E731
    parts = answer_chunks(texts, encode, batch_size)
    vectors = np.concatenate([parts[k] for k in sorted(parts)])
    np.save(out / f"{system}.npy", vectors[:sample].astype(np.float32))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / f"{system}.json").write_text(json.dumps({"peak_rss_mib": peak, "dtype": dtype}))


def main() -> None:
    args = parse_arguments(__doc__.split("\n")[0], 9, "documents whose vectors are compared", DENSE_SYSTEMS, serve_system)
    if args is None:
        return

    info = machine(args.threads)
    docs = len(scifact_texts(args.limit))
    args.sample = min(args.sample, docs)
    runs, facts, vectors = run_systems(args, DENSE_SYSTEMS, docs, script=__file__)
    ours, theirs = vectors["ours"], vectors["sentence-transformers"]
    info["loadavg_end"] = os.getloadavg()[0]
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    report = {
        "machine": info, "docs": docs, "rounds": args.rounds, "runs": runs, "systems": facts,
        "agreement": {"min_cosine": float(cosine.min()), "max_abs_diff": float(np.abs(ours - theirs).max())},
        **speed_ratios(runs, DENSE_SYSTEMS),
        "speedup_vs_sentence_transformers_bf16": {
            c: runs[f"ours|{c}"]["docs_per_s"] / runs[f"{ST_BF16}|{c}"]["docs_per_s"] for c in CONDITIONS},
    }
    name = "encode_dense" + ("" if args.limit is None else f"_limit{args.limit}")
    write_results(args.results_dir, name, report, render(report, args.sample))


def render(report: dict, sample: int) -> str:
    lines = table_head(f"SciFact dense document encoding, CPU: MiniLM (all-MiniLM-L6-v2), {report['docs']} docs, "
                       "max_seq_length 256", report, DENSE_SYSTEMS)
    agree, facts = report["agreement"], report["systems"]
    rss = " / ".join(f"{facts[name]['peak_rss_mib']:.0f}" for name in DENSE_SYSTEMS)
    ratios = [(f"SentenceTransformer ({facts['sentence-transformers']['dtype']}, its default)",
               report["speedup_vs_sentence_transformers"]),
              ("SentenceTransformer asked for bf16", report["speedup_vs_sentence_transformers_bf16"])]
    lines += ["", f"Ours runs {facts['ours']['dtype']}, what `lsr index` picks on this CPU (bf16 where the CPU has native "
              "bf16; `--dtype fp32` gives SentenceTransformer's vectors to 1e-5)."]
    lines += [f"ours / {peer}: {' / '.join(f'{c} **{speed[c]:.2f}x**' for c in CONDITIONS)}." for peer, speed in ratios]
    lines += [f"Our vectors against SentenceTransformer's fp32 ones on the first {sample} documents: min cosine "
              f"{agree['min_cosine']:.6f}, max abs diff {agree['max_abs_diff']:.1e}. Peak RSS MiB ({' / '.join(DENSE_SYSTEMS)}): "
              f"{rss}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
