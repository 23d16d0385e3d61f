"""Document encoding on CPU: our SpladeEncoder vs sentence-transformers' SparseEncoder, quiet and on a busy machine.

Each system runs in its own long-lived subprocess (clean peak RSS), and the parent hands them the
same SciFact documents (``title + " " + text``, max_length 256, ``--threads`` torch threads) in
chunks, taking turns, so drift in this shared machine's speed hits both alike. Each round has a
chunk per condition: quiet; a busy-loop process pinned to one of the cores ("one core busy"); and
a real ``lsr index`` of SciFact running beside it ("another lsr index running"). Other jobs on the
machine are where an encoder made of short parallel regions collapses.

Exactness: each system's vectors for the first ``--sample`` documents are compared with the naive
fp32 reference (transformers forward -> full logits -> log1p(relu) -> masked max). Floors: LM-head
FLOPs over the real token count divided by the measured matmul rate of each dtype at the head's shape.

    python benchmarks/encode.py --limit 512    # about 7 minutes on 2 cores
    python benchmarks/encode.py [--limit N] [--batch-size 32] [--threads 2] [--sample 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lsr.eval.report import write_results

REPO = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("LSR_BEIR_DIR") or REPO.parent / "shared" / "data" / "beir") / "scifact.tar.gz"
SYSTEMS = ("ours", "sentence-transformers")
CONDITIONS = ("quiet", "one core busy", "another lsr index running")


def scifact_texts(limit: int | None) -> list[str]:
    from lsr.eval.datasets import load_beir

    texts = load_beir(SCIFACT).doc_texts()
    return texts[:limit] if limit else texts


def model_path() -> str:
    from lsr.encode.models import resolve_model

    return resolve_model("splade-tiny")


def serve_system(system: str, limit: int | None, batch_size: int, threads: int, sample: int, out: Path) -> None:
    """Child process: load, warm up, then encode the chunks the parent names on stdin ("start stop"),
    answering one JSON line per chunk; on EOF save the sample's dense vectors and the run's facts."""
    import scipy.sparse as sp

    torch.set_num_threads(threads)
    texts = scifact_texts(limit)
    if system == "ours":
        from lsr.encode.splade import SpladeEncoder

        encoder = SpladeEncoder.from_pretrained("splade-tiny", max_length=256, device="cpu")
        encode = lambda xs: encoder.encode_documents(xs, batch_size=batch_size).to_scipy()  # noqa: E731
    else:
        from sentence_transformers import SparseEncoder

        st = SparseEncoder(model_path(), device="cpu")
        st.max_seq_length = 256

        def encode(xs):
            coo = st.encode_document(xs, batch_size=batch_size, convert_to_sparse_tensor=True).coalesce()
            rows, cols = coo.indices().numpy()
            return sp.csr_matrix((coo.values().numpy(), (rows, cols)), shape=tuple(coo.shape))

    parts = answer_chunks(texts, encode, batch_size)
    vectors = sp.vstack([parts[k] for k in sorted(parts)]).tocsr()
    np.save(out / f"{system}.npy", vectors[:sample].toarray().astype(np.float32))
    (out / f"{system}.json").write_text(json.dumps({
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_nnz": float(vectors.getnnz(axis=1).mean()),
    }))


def answer_chunks(texts: list[str], encode, batch_size: int) -> dict[int, object]:
    """The child's side: warm up, say "ready", then encode each chunk the parent names on stdin ("start stop"),
    answering one JSON line of wall and CPU seconds; returns the encoded chunks by start."""
    encode(texts[: 2 * batch_size])  # warm-up: kernel compilation, allocator, lazy imports
    print("ready", flush=True)
    parts = {}
    for line in sys.stdin:
        start, stop = map(int, line.split())
        clock, cpu = time.perf_counter(), time.process_time()
        parts[start] = encode(texts[start:stop])
        print(json.dumps({"seconds": time.perf_counter() - clock, "cpu_seconds": time.process_time() - cpu}), flush=True)
    return parts


class System:
    """A child process serving one system's encodes (``script --child SYSTEM``: this file's, or encode_dense.py's)."""

    def __init__(self, system: str, args: argparse.Namespace, out: Path, script: str = __file__) -> None:
        command = [sys.executable, script, "--child", system, "--child-out", str(out), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads), "--sample", str(args.sample)]
        command += ["--limit", str(args.limit)] if args.limit else []
        self.name = system
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{system} failed to start")

    def encode(self, start: int, stop: int) -> dict:
        self.proc.stdin.write(f"{start} {stop}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def finish(self) -> None:
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")


def other_job(condition: str, work: Path) -> list[str] | None:
    """The command line of the job a condition runs beside the encoders (None when quiet)."""
    if condition == "one core busy":  # a pure-Python busy loop pinned to the last CPU this process may use
        core = max(os.sched_getaffinity(0))
        return [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"]
    if condition == "another lsr index running":  # what a user runs: models, 2 threads, dense and BM25 legs
        return [sys.executable, "-m", "lsr", "index", str(SCIFACT), str(work / "other-index"), "--overwrite", "--quiet"]
    return None


@contextlib.contextmanager
def contention(condition: str, work: Path):
    """Run the condition's other job for the duration of the block."""
    command = other_job(condition, work)
    if command is None:
        yield
        return
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5 if condition == "one core busy" else 15.0)  # an index is encoding once its models have loaded
    try:
        yield
    finally:
        job.kill()
        job.wait()


def run_quiet_or_busy(parser: argparse.ArgumentParser, name: str, measure) -> None:
    """Parse ``parser`` plus ``--one-core-busy``, run ``measure(args, condition)`` in that condition and write its
    (report, table) as ``name`` (``name``-one-core-busy beside the busy loop) under ``args.results_dir``."""
    parser.add_argument("--one-core-busy", action="store_true",
                        help=f"run beside a busy loop pinned to one core (results under {name}-one-core-busy)")
    args = parser.parse_args()
    condition = "one core busy" if args.one_core_busy else "quiet"
    with contention(condition, Path(tempfile.gettempdir())):
        report, table = measure(args, condition)
    write_results(args.results_dir, name + ("-one-core-busy" if args.one_core_busy else ""), report, table)


def interleaved(systems: list[System], docs: int, rounds: int, work: Path) -> dict:
    """Chunks of the documents, each condition once per round, the systems taking turns (order flipped every round)."""
    chunks = len(CONDITIONS) * rounds
    bounds = np.linspace(0, docs, chunks + 1).astype(int)
    totals = {(s.name, c): {"docs": 0, "seconds": 0.0, "cpu_seconds": 0.0} for s in systems for c in CONDITIONS}
    for chunk in range(chunks):
        condition = CONDITIONS[chunk % len(CONDITIONS)]
        start, stop = int(bounds[chunk]), int(bounds[chunk + 1])
        order = systems if (chunk // len(CONDITIONS)) % 2 == 0 else systems[::-1]
        with contention(condition, work):
            for system in order:
                got = system.encode(start, stop)
                row = totals[(system.name, condition)]
                row["docs"] += stop - start
                row["seconds"] += got["seconds"]
                row["cpu_seconds"] += got["cpu_seconds"]
        print(f"chunk {chunk + 1}/{chunks} ({condition}) done", file=sys.stderr, flush=True)
    return {f"{name}|{condition}": {**row, "docs_per_s": row["docs"] / row["seconds"],
                                    "docs_per_cpu_s": row["docs"] / max(row["cpu_seconds"], 1e-9)}
            for (name, condition), row in totals.items()}


def naive_reference(texts: list[str], batch_size: int) -> np.ndarray:
    """fp32 transformers forward, full logits, log1p(relu), masked max: the definition, [len(texts), V]."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], truncation=True, max_length=256, padding=True,
                            return_tensors="pt")
            act = torch.log1p(torch.relu(model(**enc).logits))
            rows.append(act.masked_fill(~enc["attention_mask"].bool()[..., None], 0).amax(dim=1))
    return torch.cat(rows).numpy()


def real_tokens(texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=256)["input_ids"])


def matmul_rates(threads: int, hidden: int, vocab: int, rows: int = 256) -> dict[str, float]:
    """Best-of GFLOP/s (GOP/s for int8) of [rows, H] x [H, V] as the head computes it, per dtype."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, hidden, generator=gen), torch.randn(hidden, vocab, generator=gen)
    qa = torch.randint(-127, 128, (rows, hidden), dtype=torch.int8, generator=gen)
    qb = torch.randint(-127, 128, (vocab, hidden), dtype=torch.int8, generator=gen)
    runs = {
        "fp32": lambda: torch.mm(a, b),
        "bf16": lambda: torch.mm(a.bfloat16(), b.bfloat16()),
        "int8": lambda: [torch._int_mm(qa, qb[s : s + 1024].t()) for s in range(0, vocab, 1024)],
    }
    rates = {}
    for name, fn in runs.items():
        fn()
        best = min(_timed(fn) for _ in range(10))
        rates[name] = 2 * rows * hidden * vocab / best / 1e9
    return rates


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine(threads: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    return {
        "cpu": cpu or platform.processor(), "cores": os.cpu_count(), "torch_threads": threads,
        "torch": torch.__version__, "python": platform.python_version(),
        "int8_vnni": "avx512_vnni" in flags, "bf16_hw": "avx512_bf16" in flags or "amx_bf16" in flags,
        "loadavg_start": os.getloadavg()[0],
    }


def parse_arguments(description: str, minutes: int, sample_help: str, systems: tuple[str, ...],
                    serve) -> argparse.Namespace | None:
    """The options every CPU encoding benchmark takes; None once ``serve`` has run this process as a child."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--limit", type=int, default=None, help=f"first N documents only (512: about {minutes} minutes)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sample", type=int, default=256, help=sample_help)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one chunk per condition (3 conditions)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--child", choices=systems, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        serve(args.child, args.limit, args.batch_size, args.threads, args.sample, args.child_out)
        return None
    return args


def speed_ratios(runs: dict, systems: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """docs/s of ours over sentence-transformers' per condition, and of each system over its own quiet rate."""
    return {
        "speedup_vs_sentence_transformers": {
            c: runs[f"ours|{c}"]["docs_per_s"] / runs[f"sentence-transformers|{c}"]["docs_per_s"] for c in CONDITIONS},
        "over_quiet": {f"{name}|{c}": runs[f"{name}|{c}"]["docs_per_s"] / runs[f"{name}|quiet"]["docs_per_s"]
                       for name in systems for c in CONDITIONS},
    }


def run_systems(args: argparse.Namespace, systems: tuple[str, ...], docs: int, script: str = __file__
                ) -> tuple[dict, dict, dict]:
    """A child per system (``script --child``), the chunks handed out taking turns: (runs, each child's facts,
    each child's sample vectors)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        children = [System(name, args, Path(tmp), script) for name in systems]
        runs = interleaved(children, docs, args.rounds, Path(tmp))
        for child in children:
            child.finish()
        facts = {name: json.loads((Path(tmp) / f"{name}.json").read_text()) for name in systems}
        vectors = {name: np.load(Path(tmp) / f"{name}.npy") for name in systems}
    return runs, facts, vectors


def condition_rows(report: dict, systems: tuple[str, ...]) -> list[str]:
    """The docs/s table, a row per system and condition, as both encoding benchmarks print it."""
    lines = ["| system | condition | docs/s | docs per CPU-second | vs quiet |", "|---|---|---:|---:|---:|"]
    for name in systems:
        for condition in CONDITIONS:
            row = report["runs"][f"{name}|{condition}"]
            ratio = f"{report['over_quiet'][f'{name}|{condition}']:.2f}" if condition != "quiet" else ""
            lines.append(f"| {name} | {condition} | {row['docs_per_s']:.1f} | {row['docs_per_cpu_s']:.1f} | {ratio} |")
    return lines


def main() -> None:
    args = parse_arguments(__doc__.split("\n")[0], 7, "documents compared with the fp32 reference", SYSTEMS, serve_system)
    if args is None:
        return

    info = machine(args.threads)
    texts = scifact_texts(args.limit)
    args.sample = min(args.sample, len(texts))
    runs, facts, vectors = run_systems(args, SYSTEMS, len(texts))
    torch.set_num_threads(args.threads)
    reference = naive_reference(texts[: args.sample], args.batch_size)
    for name in SYSTEMS:
        facts[name]["max_abs_diff"] = float(np.abs(vectors[name] - reference).max())
        facts[name]["same_nonzero_sets"] = bool(np.array_equal(vectors[name] > 0, reference > 0))

    tokens = real_tokens(texts)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path())
    rates = matmul_rates(args.threads, config.hidden_size, config.vocab_size)
    head_gflop = 2 * tokens * config.hidden_size * config.vocab_size / 1e9
    floors = {dtype: len(texts) / (head_gflop / rate) for dtype, rate in rates.items()}
    info["loadavg_end"] = os.getloadavg()[0]
    ratios = speed_ratios(runs, SYSTEMS)
    speedup = ratios["speedup_vs_sentence_transformers"]
    report = {
        "machine": info, "docs": len(texts), "real_tokens": tokens, "head_gflop": head_gflop, "rounds": args.rounds,
        "matmul_rate_gflops": rates, "head_floor_docs_per_s": floors, "runs": runs, "systems": facts,
        **ratios,
        "cpu_speedup_vs_sentence_transformers": {
            c: runs[f"ours|{c}"]["docs_per_cpu_s"] / runs[f"sentence-transformers|{c}"]["docs_per_cpu_s"] for c in CONDITIONS},
        "ours_vs_fp32_floor": runs["ours|quiet"]["docs_per_s"] / floors["fp32"],
        "targets": {"quiet_4x": speedup["quiet"] >= 4, "one_core_busy_3x": speedup["one core busy"] >= 3,
                    "exact": facts["ours"]["max_abs_diff"] <= 1e-4 and facts["ours"]["same_nonzero_sets"]},
    }
    name = "encode" + ("" if args.limit is None else f"_limit{args.limit}") + ("" if args.threads == 2 else f"_{args.threads}thread")
    write_results(args.results_dir, name, report, render(report, args.sample))


def table_head(title: str, report: dict, systems: tuple[str, ...]) -> list[str]:
    """The title, the machine and the method, and the docs/s table: how both encoding benchmarks' results open."""
    m = report["machine"]
    return [f"# {title}", "", machine_sentence(m, report["rounds"]), "", *condition_rows(report, systems)]


def machine_sentence(m: dict, rounds: int) -> str:
    return (f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, "
            f"int8 VNNI: {m['int8_vnni']}, bf16 hardware: {m['bf16_hw']}; load average {m['loadavg_start']:.1f} -> "
            f"{m['loadavg_end']:.1f}. The systems take turns on the same chunks ({rounds} rounds of a chunk per "
            "condition), so drift hits both; other jobs sharing the cores make absolute figures lower bounds.")


def render(report: dict, sample: int) -> str:
    lines = table_head(f"SciFact document encoding, CPU ({report['docs']} docs, {report['real_tokens']} real tokens, "
                       "max_length 256)", report, SYSTEMS)
    lines += ["", f"| system | peak RSS MiB | max abs diff vs fp32 reference ({sample} docs) | same non-zero sets | mean nnz |",
              "|---|---:|---:|:---:|---:|"]
    for name, row in report["systems"].items():
        lines.append(f"| {name} | {row['peak_rss_mib']:.0f} | {row['max_abs_diff']:.2e} | {row['same_nonzero_sets']} | {row['mean_nnz']:.0f} |")
    lines += ["", "| LM-head-only floor (head FLOPs / measured matmul rate) | GFLOP/s | docs/s |", "|---|---:|---:|"]
    for dtype, rate in report["matmul_rate_gflops"].items():
        lines.append(f"| {dtype} | {rate:.0f} | {report['head_floor_docs_per_s'][dtype]:.1f} |")
    speed, cpu = report["speedup_vs_sentence_transformers"], report["cpu_speedup_vs_sentence_transformers"]
    lines += ["", f"ours / sentence-transformers: quiet **{speed['quiet']:.2f}x** (target 4x), one core busy "
              f"**{speed['one core busy']:.2f}x** (target 3x), another `lsr index` running **{speed['another lsr index running']:.2f}x** "
              f"(the issue saw 0.17x); per CPU-second {' / '.join(f'{cpu[c]:.2f}x' for c in CONDITIONS)}; "
              f"exact vectors: {report['targets']['exact']}; ours (quiet) / fp32 head floor: {report['ours_vs_fp32_floor']:.2f}x"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
