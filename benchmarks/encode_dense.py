"""Dense document encoding on CPU: our DenseEncoder vs sentence-transformers' SentenceTransformer (MiniLM).

The dense leg is most of a CPU ``lsr index`` (SciFact with the defaults: 241 of its 290 encoding
seconds), so it is measured against what a user would run instead, the same way ``encode.py``
measures SPLADE: each system in its own long-lived subprocess, the same SciFact documents
(``title + " " + text``, each model's own max_seq_length, 256) in chunks, the systems taking turns,
quiet, with one core busy and with another ``lsr index`` running. Agreement: our vectors against
SentenceTransformer's on the first ``--sample`` documents (cosine and max abs difference).

    python benchmarks/encode_dense.py --limit 512    # about 6 minutes on 2 cores

Writes benchmarks/results/encode_dense[_limitN].md and .json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from encode import CONDITIONS, REPO, System, interleaved, machine, scifact_texts

SYSTEMS = ("ours", "sentence-transformers")


def serve_system(system: str, limit: int | None, batch_size: int, threads: int, sample: int, out: Path) -> None:
    """Child process: load, warm up, encode the chunks the parent names on stdin, save the sample's vectors."""
    torch.set_num_threads(threads)
    texts = scifact_texts(limit)
    if system == "ours":
        from lsr.encode.dense import DenseEncoder

        encoder = DenseEncoder.from_pretrained("minilm", device="cpu")
        encode = lambda xs: encoder.encode_documents(xs, batch_size=batch_size)  # noqa: E731
    else:
        from sentence_transformers import SentenceTransformer

        from lsr.encode.models import resolve_model

        st = SentenceTransformer(resolve_model("minilm"), device="cpu")
        encode = lambda xs: st.encode(xs, batch_size=batch_size, convert_to_numpy=True)  # noqa: E731
    encode(texts[: 2 * batch_size])  # warm-up: allocator, lazy imports
    print("ready", flush=True)
    parts = {}
    for line in sys.stdin:
        start, stop = map(int, line.split())
        clock, cpu = time.perf_counter(), time.process_time()
        parts[start] = encode(texts[start:stop])
        print(json.dumps({"seconds": time.perf_counter() - clock, "cpu_seconds": time.process_time() - cpu}), flush=True)
    vectors = np.concatenate([parts[k] for k in sorted(parts)])
    np.save(out / f"{system}.npy", vectors[:sample].astype(np.float32))
    (out / f"{system}.json").write_text(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N documents only (512: about 6 minutes)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample", type=int, default=256, help="documents whose vectors are compared")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one chunk per condition (3 conditions)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        serve_system(args.child, args.limit, args.batch_size, args.threads, args.sample, args.child_out)
        return

    info = machine(args.threads)
    docs = len(scifact_texts(args.limit))
    args.sample = min(args.sample, docs)
    with tempfile.TemporaryDirectory() as tmp:
        systems = [System(name, args, Path(tmp), script=__file__) for name in SYSTEMS]
        runs = interleaved(systems, docs, args.rounds, Path(tmp))
        for system in systems:
            system.finish()
        facts = {name: json.loads((Path(tmp) / f"{name}.json").read_text()) for name in SYSTEMS}
        ours, theirs = (np.load(Path(tmp) / f"{name}.npy") for name in SYSTEMS)
    info["loadavg_end"] = __import__("os").getloadavg()[0]
    cosine = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    report = {
        "machine": info, "docs": docs, "rounds": args.rounds, "runs": runs, "systems": facts,
        "agreement": {"min_cosine": float(cosine.min()), "max_abs_diff": float(np.abs(ours - theirs).max())},
        "speedup_vs_sentence_transformers": {
            c: runs[f"ours|{c}"]["docs_per_s"] / runs[f"sentence-transformers|{c}"]["docs_per_s"] for c in CONDITIONS},
        "over_quiet": {f"{name}|{c}": runs[f"{name}|{c}"]["docs_per_s"] / runs[f"{name}|quiet"]["docs_per_s"]
                       for name in SYSTEMS for c in CONDITIONS},
    }
    table = render(report, args.sample)
    print(table)
    name = "encode_dense" + ("" if args.limit is None else f"_limit{args.limit}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results_dir / f"{name}.md").write_text(table + "\n")


def render(report: dict, sample: int) -> str:
    m = report["machine"]
    lines = [
        f"# SciFact dense document encoding, CPU: MiniLM (all-MiniLM-L6-v2), {report['docs']} docs, max_seq_length 256",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}; load average "
        f"{m['loadavg_start']:.1f} -> {m['loadavg_end']:.1f}. The systems take turns on the same chunks "
        f"({report['rounds']} rounds of a chunk per condition), so drift hits both.",
        "",
        "| system | condition | docs/s | docs per CPU-second | vs quiet |",
        "|---|---|---:|---:|---:|",
    ]
    for name in SYSTEMS:
        for condition in CONDITIONS:
            row = report["runs"][f"{name}|{condition}"]
            ratio = f"{report['over_quiet'][f'{name}|{condition}']:.2f}" if condition != "quiet" else ""
            lines.append(f"| {name} | {condition} | {row['docs_per_s']:.1f} | {row['docs_per_cpu_s']:.1f} | {ratio} |")
    speed, agree = report["speedup_vs_sentence_transformers"], report["agreement"]
    rss = " / ".join(f"{report['systems'][name]['peak_rss_mib']:.0f}" for name in SYSTEMS)
    lines += ["", f"ours / SentenceTransformer: {' / '.join(f'{c} **{speed[c]:.2f}x**' for c in CONDITIONS)}. "
              f"Vectors on the first {sample} documents: min cosine {agree['min_cosine']:.6f}, max abs diff "
              f"{agree['max_abs_diff']:.1e}. Peak RSS MiB (ours / theirs): {rss}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
