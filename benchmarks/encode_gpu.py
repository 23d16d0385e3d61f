"""Document encoding on one CUDA GPU: ours cold / warm / impl="torch" against sentence-transformers' SparseEncoder.

Two models, bf16, max_length 256, batch 128 (the same for every system):

- splade-tiny on all 5,183 SciFact documents;
- a BERT-base-size SPLADE (12 layers, H = 768, random weights from ``BertConfig``, seed 0) on the
  2,048 first SciFact documents that fill all 256 positions; its MLM decoder bias is shifted so a
  document keeps about ``TARGET_NNZ`` non-zero terms (random weights would otherwise keep thousands).

Columns: **cold** is a fresh subprocess with an empty Triton cache (model load and the encoder's
warm-up compile reported apart from the first pass), **cold, Triton cache warm** a fresh subprocess
reusing the on-disk kernels of the first, **warm** the second pass in the same process, **torch**
``impl="torch"`` (eager pooling), and SparseEncoder's second pass. Each system reports docs/s and peak
GPU memory; ours are checked against an fp32 naive reference (transformers logits -> log1p(relu) ->
masked max) on ``SAMPLE`` documents: the share of non-zero entries both agree on (intersection over
union) and the norm-wise relative error. Last, ``lsr index`` of SciFact with MiniLM on the GPU, twice (the machine's first run compiles what later ones reuse)
(model loading included), wall time per stage.

Where the time goes, for the next change: every batch of the cold and warm passes is clocked with its shape (a pass's
time past its batches' sum is the device waiting for the tokenising thread), a warm pass is split into tokenising,
padding and device work and profiled (the main thread's top functions; torch.profiler's device busy time and kernel
launches against the pass), and a third fresh process runs its cold pass after one encode of synthetic documents
through the whole pipeline (``LSR_BENCH_PIPELINE_WARM_UP=1``): whether a load-time warm-up of the pipeline would
close the gap between the cold and warm passes.

    python benchmarks/encode_gpu.py        # about 3 minutes on one H200; needs CUDA

Writes benchmarks/results/encode_gpu.md and .json, again after each model, so a run cut off at its limit keeps
what it measured; a model whose measurement fails is reported with its error and the run goes on.
``LSR_BENCH_REHEARSE=1`` runs the same code on the CPU at toy sizes (``benchmarks/gpu_session.sh --rehearse``):
a GPU lease is short, so the plumbing is proven here first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("LSR_BEIR_DIR") or REPO.parent / "shared" / "data" / "beir") / "scifact.tar.gz"
MAX_LENGTH = 256
BATCH = 128
SAMPLE = 256
BASE_DOCS = 2048
TARGET_NNZ = 200
TARGETS = {"splade-tiny": {"cold": 4.0, "warm": 6.0}, "bert-base-random": {"cold": 2.0, "warm": 2.0}}
INDEX_TARGET_SECONDS = 15.0
REHEARSAL = os.environ.get("LSR_BENCH_REHEARSE") == "1"
DEVICE = "cpu" if REHEARSAL else "cuda"
REHEARSAL_DOCS = 48


# ---------------------------------------------------------------------------- pieces testable on CPU
def bias_shift(pooled_logits: np.ndarray, target_nnz: int) -> float:
    """How much to subtract from every vocabulary bias so a document keeps ``target_nnz`` terms on average.

    ``pooled_logits`` [docs, V] are max-pooled logits; a term survives where its logit is > 0, so
    shifting by the mean of each document's ``target_nnz``-th largest logit centres the counts there.
    """
    kth = np.partition(pooled_logits, -target_nnz, axis=1)[:, -target_nnz]
    return float(kth.mean())


def agreement(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """[docs, V] each → share of all entries whose zero/non-zero status agrees, the stricter share of non-zero
    entries both have (|A ∩ B| / |A ∪ B|), and the norm-wise relative error."""
    a, b = ours > 0, reference > 0
    union = np.logical_or(a, b).sum()
    return {
        "entry_agreement": float((a == b).mean()),
        "nonzero_agreement": float(np.logical_and(a, b).sum() / max(union, 1)),
        "relative_error": float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-30)),
    }


def long_documents(lengths: np.ndarray, count: int, length: int) -> np.ndarray:
    """Positions of the first ``count`` documents with at least ``length`` tokens (all pad to ``length``)."""
    found = np.flatnonzero(lengths >= length)[:count]
    if len(found) < count:
        raise ValueError(f"only {len(found)} documents have {length} tokens; {count} were asked for")
    return found


def require_cuda(script: str = "encode_gpu.py", cpu_hint: str = "run benchmarks/encode.py for the CPU comparison") -> None:
    """Exit 2 with one line when torch sees no CUDA GPU (every GPU benchmark starts here, unless rehearsing)."""
    import torch

    if not REHEARSAL and not torch.cuda.is_available():
        print(f"{script}: error: needs a CUDA GPU; torch {torch.__version__} sees none ({cpu_hint})", file=sys.stderr)
        raise SystemExit(2)


def publish(report: dict, table: str, stem: Path) -> None:
    """Print the table and write it as ``stem``.md beside the full report as ``stem``.json."""
    print(table)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table + "\n")


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    import torch

    synchronize(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    """Peak GPU memory allocated since ``reset_peak``; on CPU the process's peak RSS (model loading included)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU rehearsal"


# ---------------------------------------------------------------------------- children (one per measurement)
def scifact_texts() -> list[str]:
    from lsr.eval.datasets import load_beir

    texts = load_beir(SCIFACT).doc_texts()
    return texts[:REHEARSAL_DOCS] if REHEARSAL else texts


def texts_for(model: str) -> list[str]:
    texts = scifact_texts()
    if model == "splade-tiny":
        return texts
    from transformers import AutoTokenizer

    from lsr.encode.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("splade-tiny"))
    lengths = np.array([len(ids) for ids in tokenizer(texts)["input_ids"]])
    return [texts[i] for i in long_documents(lengths, REHEARSAL_DOCS // 4 if REHEARSAL else BASE_DOCS, MAX_LENGTH)]


def make_base_model(folder: Path) -> None:
    """A random BERT-base MLM with splade-tiny's tokenizer, its decoder bias shifted to ~TARGET_NNZ terms a document."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from lsr.encode.models import resolve_model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("splade-tiny"))
    model = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size)).to(DEVICE).eval()
    sample = texts_for("bert-base-random")[:64]
    with torch.inference_mode():
        enc = tokenizer(sample, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt").to(DEVICE)
        logits = model(**enc).logits.masked_fill(~enc["attention_mask"].bool()[..., None], float("-inf"))
        shift = bias_shift(logits.amax(dim=1).float().cpu().numpy(), TARGET_NNZ)
        model.cls.predictions.bias -= shift
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def fp32_reference(path: str, texts: list[str]) -> np.ndarray:
    """The definition in fp32 on the GPU: full logits, log1p(relu), masked max."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path).to(DEVICE).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            enc = tokenizer(texts[start : start + 32], truncation=True, max_length=MAX_LENGTH, padding=True,
                            return_tensors="pt").to(DEVICE)
            act = torch.log1p(torch.relu(model(**enc).logits.float()))
            rows.append(act.masked_fill(~enc["attention_mask"].bool()[..., None], 0).amax(dim=1).cpu())
    del model
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return torch.cat(rows).numpy()


def triton_cache_entries() -> int:
    """Kernels in this process's Triton cache folder (the children set TRITON_CACHE_DIR): compiles show as new ones."""
    folder = Path(os.environ.get("TRITON_CACHE_DIR", Path.home() / ".triton" / "cache"))
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def timed_pass(encode, texts: list[str]) -> dict:
    reset_peak(DEVICE)
    start = time.perf_counter()
    vectors = encode(texts)
    synchronize(DEVICE)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "docs_per_s": len(texts) / seconds, "peak_gpu_mib": peak_gib(DEVICE) * 1024,
            "vectors": vectors}


def pass_split(encoder, texts: list[str]) -> dict:
    """Where a warm pass goes, each part alone: tokenising (as the pipeline calls it), padding into batches, the
    device's work on ready batches (copy, forward, pooling, CSR back), and the main thread's own profile of one
    whole pass (its top functions by own time: waiting on the tokenising thread shows as ``queue.get``)."""
    import cProfile
    import io
    import pstats

    from lsr.encode.batching import budget_batches, pad_multiple

    start = time.perf_counter()
    rows, _ = encoder._tokenize(texts, MAX_LENGTH)
    tokenised = time.perf_counter()
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    batches = [encoder._batch_inputs([rows[i] for i in part])
               for part in budget_batches(lengths, BATCH * MAX_LENGTH, pad_multiple(encoder.device))]
    padded = time.perf_counter()
    for tensors in batches:
        encoder._encode_batch(*(t.to(encoder.device) for t in tensors), None)
    synchronize(DEVICE)
    computed = time.perf_counter()
    profile = cProfile.Profile()
    profile.runcall(encoder.encode_documents, texts, batch_size=BATCH)
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("tottime").print_stats(12)
    return {"tokenise_seconds": tokenised - start, "pad_seconds": padded - tokenised, "device_seconds": computed - padded,
            "main_thread_profile": [line for line in stream.getvalue().splitlines() if line.strip()][-13:]}


def batch_clock(encoder) -> list:
    """Clock every batch the encoder computes from now on: (rows, padded length, seconds) each. A batch ends in its one
    copy back to the host, which waits for the device, so a call's time is its launches plus its device work; a pass's
    time past the sum is the main thread waiting for the tokenising thread."""
    clocked, compute = [], encoder._encode_batch

    def timed(input_ids, *rest):
        began = time.perf_counter()
        out = compute(input_ids, *rest)
        clocked.append((int(input_ids.shape[0]), int(input_ids.shape[1]), time.perf_counter() - began))
        return out

    encoder._encode_batch = timed
    return clocked


def batch_summary(clocked: list, seconds: float) -> dict:
    """A pass's batches: how many, their summed time against the pass, and the five slowest with their shapes."""
    slowest = sorted(clocked, key=lambda b: -b[2])[:5]
    return {"batches": len(clocked), "compute_seconds": sum(b[2] for b in clocked), "pass_seconds": seconds,
            "slowest": [f"{rows}x{length} {s * 1000:.1f} ms" for rows, length, s in slowest]}


def device_profile(encoder, texts: list[str]) -> dict:
    """One warm pass under torch.profiler: the device's busy time (its kernels' summed time) against the pass, the
    kernel launches, and the host's top operators by own time; a device far from busy means the host limits."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        encoder.encode_documents(texts, batch_size=BATCH)
        synchronize(DEVICE)
        seconds = time.perf_counter() - start
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events
                    if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    launches = sum(e.count for e in events if "LaunchKernel" in e.key or e.key.startswith("cuLaunch"))
    host = sorted((e for e in events if getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA),
                  key=lambda e: -e.self_cpu_time_total)[:10]
    return {"pass_seconds": seconds, "device_busy_seconds": device_us / 1e6, "kernel_launches": launches,
            "host_top": [f"{e.key[:60]} x{e.count} {e.self_cpu_time_total / 1e3:.0f} ms" for e in host]}


def child_ours(model: str, path: str) -> dict:
    """Cold first pass, warm second pass, then impl="torch"; agreement of each with the fp32 reference.
    ``LSR_BENCH_PIPELINE_WARM_UP=1``: before the cold pass, one encode of 2 x BATCH synthetic documents through the
    whole pipeline (the variant that says whether a load-time warm-up of the pipeline would close a cold gap)."""
    texts = texts_for(model)
    start = time.perf_counter()
    import torch

    marks = {"import torch": time.perf_counter()}
    torch.zeros(1, device=DEVICE)
    synchronize(DEVICE)
    marks["CUDA context"] = time.perf_counter()
    from lsr.encode.splade import SpladeEncoder

    marks["import lsr"] = time.perf_counter()
    warm_up, warm_up_seconds = SpladeEncoder.warm_up, []

    def timed_warm_up(self) -> None:  # the load's last step, clocked apart
        began = time.perf_counter()
        warm_up(self)
        synchronize(DEVICE)
        warm_up_seconds.append(time.perf_counter() - began)

    SpladeEncoder.warm_up = timed_warm_up
    encoder = SpladeEncoder.from_pretrained(path, max_length=MAX_LENGTH, device=DEVICE, dtype="bf16")
    SpladeEncoder.warm_up = warm_up
    synchronize(DEVICE)
    load_seconds = time.perf_counter() - start
    previous, load_parts = start, {}
    for name, mark in marks.items():
        load_parts[name], previous = mark - previous, mark
    load_parts["weights"] = time.perf_counter() - previous - sum(warm_up_seconds)
    load_parts["warm-up"] = sum(warm_up_seconds)
    loaded_transformers = "transformers" in sys.modules  # a plain BERT folder loads natively, without it
    encode = lambda xs: encoder.encode_documents(xs, batch_size=BATCH)  # noqa: E731  (to scipy after the clock)
    pipeline_warm_up = os.environ.get("LSR_BENCH_PIPELINE_WARM_UP") == "1"
    if pipeline_warm_up:
        began = time.perf_counter()
        encode([" ".join(["retrieval"] * MAX_LENGTH)] * (2 * BATCH))
        synchronize(DEVICE)
        load_parts["pipeline warm-up"] = time.perf_counter() - began
    cached = triton_cache_entries()
    clocked = batch_clock(encoder)
    cold = timed_pass(encode, texts)
    cold_batches = batch_summary(clocked, cold["seconds"])
    compiled_in_first_pass = triton_cache_entries() - cached
    clocked.clear()
    warm = timed_pass(encode, texts)
    warm_batches = batch_summary(clocked, warm["seconds"])
    del encoder._encode_batch  # the class's own again
    split = pass_split(encoder, texts)
    profiled = device_profile(encoder, texts)
    eager = SpladeEncoder(encoder.model, encoder.tokenizer, max_length=MAX_LENGTH, device=DEVICE, dtype="bf16", impl="torch")
    torch_pass = timed_pass(lambda xs: eager.encode_documents(xs, batch_size=BATCH), texts)
    reference = fp32_reference(path, texts[:SAMPLE])
    out = {"load_and_warm_up_seconds": load_seconds, "load_parts": load_parts,
           "loaded_transformers": loaded_transformers, **split, "profile": profiled, "pipeline_warm_up": pipeline_warm_up,
           "batches": {"cold": cold_batches, "warm": warm_batches},
           "triton_compiles_in_first_pass": compiled_in_first_pass}
    eager_sample = torch_pass["vectors"].to_scipy()[:SAMPLE].toarray()
    for name, run in (("cold", cold), ("warm", warm), ("torch", torch_pass)):
        vectors = run.pop("vectors").to_scipy()
        sample = vectors[:SAMPLE].toarray()
        out[name] = {**run, **agreement(sample, reference), "mean_nnz": float(vectors.getnnz(axis=1).mean()),
                     "relative_error_vs_torch": agreement(sample, eager_sample)["relative_error"]}
    return out


def child_sentence_transformers(model: str, path: str) -> dict:
    import torch
    from sentence_transformers import SparseEncoder

    texts = texts_for(model)
    st = SparseEncoder(path, device=DEVICE, model_kwargs={"torch_dtype": torch.bfloat16})
    st.max_seq_length = MAX_LENGTH
    encode = lambda xs: st.encode_document(xs, batch_size=BATCH, convert_to_sparse_tensor=True)  # noqa: E731
    first = timed_pass(encode, texts)
    second = timed_pass(encode, texts)
    for run in (first, second):
        run.pop("vectors")
    return {"first": first, "warm": second}


def run_child(kind: str, model: str, path: str, env: dict | None = None) -> dict:
    """One measurement in a fresh process; its stderr is echoed, and its tail is the error when it fails."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([sys.executable, __file__, "--child", kind, "--model", model, "--path", path, "--child-out",
                               out.name], env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} on {model} exited {proc.returncode}: {proc.stderr[-1500:]}")
        return json.loads(Path(out.name).read_text())


def index_scifact(work: Path) -> dict:
    """``lsr index`` of SciFact with MiniLM on the GPU in a fresh process, as a user would run it: twice, since the
    machine's first run also compiles (Triton's kernels, numba's loops, Python's bytecode) what later runs reuse."""
    from lsr.ingest.layout import META_FILE

    runs = []
    for run in ("first", "second"):
        out = work / f"scifact-index-{run}"
        start = time.perf_counter()
        limit = ["--limit", str(REHEARSAL_DOCS)] if REHEARSAL else []
        subprocess.run([sys.executable, "-m", "lsr", "index", str(SCIFACT), str(out), "--device", DEVICE, "--batch-size",
                        str(BATCH), "--quiet", *limit], check=True, stdout=subprocess.DEVNULL)
        meta = json.loads((out / META_FILE).read_text())
        runs.append({"wall_seconds": time.perf_counter() - start, "stage_seconds": meta["stage_seconds"],
                     "encoded_with": meta.get("encoded_with"), "docs": meta["n_docs"]})
    return {**runs[0], "second_run": runs[1]}


# ---------------------------------------------------------------------------- the run
def machine() -> dict:
    import torch
    import triton

    if REHEARSAL:
        return {"gpu": device_name(), "sms": 0, "gpu_memory_gib": 0.0, "torch": torch.__version__,
                "triton": triton.__version__, "cuda": None, "python": sys.version.split()[0]}
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "sms": props.multi_processor_count, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": sys.version.split()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--pieces", default="splade-tiny,bert-base-random,index",
                        help="comma-separated: splade-tiny, bert-base-random, index (default: all)")
    parser.add_argument("--child", choices=("ours", "sentence-transformers", "make-base"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    require_cuda()
    if args.child == "make-base":
        make_base_model(Path(args.path))
        Path(args.child_out).write_text("{}")
        return
    if args.child:
        run = child_ours if args.child == "ours" else child_sentence_transformers
        Path(args.child_out).write_text(json.dumps(run(args.model, args.path)))
        return

    from lsr.encode.models import resolve_model

    started = time.perf_counter()
    report = {"machine": machine(), "batch_size": BATCH, "max_length": MAX_LENGTH, "dtype": "bf16", "models": {},
              "errors": {}}
    stem = args.results_dir / "encode_gpu"

    def measured(what: str, measure) -> None:
        """Run one piece; on failure keep its error and go on. Publish what is known so far either way."""
        try:
            measure()
        except Exception as error:  # a benchmark reports a failed piece and measures the rest
            report["errors"][what] = f"{type(error).__name__}: {error}"[-2000:]
        report["total_seconds"] = time.perf_counter() - started
        publish(report, render(report), stem)
        print(f"{what}: done ({report['total_seconds']:.0f} s)", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "bert-base-random"
        paths = {"splade-tiny": resolve_model("splade-tiny"), "bert-base-random": str(base)}

        def measure_model(model: str) -> None:
            if model == "bert-base-random":
                run_child("make-base", model, str(base))
            triton_cache = {"TRITON_CACHE_DIR": str(work / f"triton-{model}")}
            row = report["models"][model] = {"docs": len(texts_for(model))}
            row["ours"] = run_child("ours", model, paths[model], triton_cache)
            row["ours_triton_cache_warm"] = run_child("ours", model, paths[model], triton_cache)
            row["ours_pipeline_warm_up"] = run_child("ours", model, paths[model],
                                                     {**triton_cache, "LSR_BENCH_PIPELINE_WARM_UP": "1"})
            row["sentence_transformers"] = run_child("sentence-transformers", model, paths[model])

        pieces = args.pieces.split(",")
        for model in (m for m in paths if m in pieces):
            measured(model, lambda: measure_model(model))
        if "index" in pieces:
            measured("lsr index", lambda: report.__setitem__("index", index_scifact(work)))


def load_parts(ours: dict) -> str:
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in ours.get("load_parts", {}).items()) or "not measured"


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Document encoding on one GPU ({m['gpu']}, {m['sms']} SMs, {m['gpu_memory_gib']} GiB; torch {m['torch']}, "
        f"Triton {m['triton']}, CUDA {m['cuda']})",
        "",
        f"bf16, max_length {report['max_length']}, batch {report['batch_size']} for every system; docs/s of the encode call "
        "(tokenisation included); peak = GPU memory allocated during the pass (model included). Agreement against the "
        f"fp32 reference on {SAMPLE} documents: entries whose zero/non-zero status agrees (all V per document; target "
        "≥ 99.5%), the stricter intersection / union of the non-zero sets, and relative error (target ≤ 1e-2). The fp32 "
        "reference runs the transformer in fp32, so that error includes the bf16 transformer's; the kernel's own is the "
        'relative error against impl="torch" (the same bf16 transformer, pooled eagerly).',
        "",
        "| model | system | docs/s | vs SparseEncoder | peak GPU MiB | entries agreeing | non-zero IoU | relative error "
        '| rel. error vs impl="torch" | mean nnz |',
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    complete = {model: row for model, row in report["models"].items() if "sentence_transformers" in row}
    for model, row in complete.items():
        st = row["sentence_transformers"]["warm"]["docs_per_s"]
        runs = [("ours, cold (fresh process, empty Triton cache)", row["ours"]["cold"]),
                ("ours, cold (fresh process, Triton cache warm)", row["ours_triton_cache_warm"]["cold"]),
                ("ours, cold after a pipeline warm-up (Triton cache warm)", row.get("ours_pipeline_warm_up", {}).get("cold")),
                ("ours, warm (second pass)", row["ours"]["warm"]), ('ours, impl="torch"', row["ours"]["torch"])]
        for name, run in (r for r in runs if r[1] is not None):
            lines.append(f"| {model} | {name} | {run['docs_per_s']:.0f} | {run['docs_per_s'] / st:.2f}x | {run['peak_gpu_mib']:.0f} | "
                         f"{run['entry_agreement']:.5f} | {run['nonzero_agreement']:.4f} | {run['relative_error']:.1e} | "
                         f"{run['relative_error_vs_torch']:.1e} | {run['mean_nnz']:.0f} |")
        for name, run in (("SparseEncoder, first pass", row["sentence_transformers"]["first"]),
                          ("SparseEncoder, second pass", row["sentence_transformers"]["warm"])):
            lines.append(f"| {model} | {name} | {run['docs_per_s']:.0f} | {run['docs_per_s'] / st:.2f}x | {run['peak_gpu_mib']:.0f} | | | | | |")
    lines += ["", "| model | load + warm-up s, empty Triton cache (its parts; loaded transformers; Triton compiles in the "
              "first pass) | load + warm-up s, Triton cache warm (its parts) | a warm pass alone: tokenising; padding; device s | "
              "cold x SparseEncoder (target) | warm x SparseEncoder (target) |", "|---|---:|---:|---:|---:|---:|"]
    for model, row in complete.items():
        st = row["sentence_transformers"]["warm"]["docs_per_s"]
        target = TARGETS[model]
        ours = row["ours"]
        parts = [load_parts(ours), {True: "yes", False: "no"}.get(ours.get("loaded_transformers"), "not measured"),
                 str(ours.get("triton_compiles_in_first_pass", "not measured"))]
        tokenise = "; ".join(f"{ours[k]:.2f}" if k in ours else "not measured"
                             for k in ("tokenise_seconds", "pad_seconds", "device_seconds"))
        lines.append(f"| {model} | {ours['load_and_warm_up_seconds']:.1f} ({'; '.join(parts)}) | "
                     f"{row['ours_triton_cache_warm']['load_and_warm_up_seconds']:.1f} "
                     f"({load_parts(row['ours_triton_cache_warm'])}) | {tokenise} | "
                     f"{row['ours']['cold']['docs_per_s'] / st:.2f}x ({target['cold']:.0f}x) | "
                     f"{row['ours']['warm']['docs_per_s'] / st:.2f}x ({target['warm']:.0f}x) |")
    for model, row in complete.items():
        for name, ours in (("empty Triton cache", row["ours"]), ("Triton cache warm", row["ours_triton_cache_warm"]),
                           ("pipeline warm-up", row.get("ours_pipeline_warm_up"))):
            for which, b in (ours or {}).get("batches", {}).items():
                lines.append(f"- {model}, {name}, {which} pass: {b['batches']} batches, {b['compute_seconds']:.2f} s in "
                             f"batch calls of a {b['pass_seconds']:.2f} s pass; slowest: {', '.join(b['slowest'])}")
        profiled = row["ours"].get("profile")
        if profiled:
            lines += [f"- {model}, a warm pass under torch.profiler: {profiled['pass_seconds']:.2f} s, device busy "
                      f"{profiled['device_busy_seconds']:.2f} s, {profiled['kernel_launches']} kernel launches; host's top "
                      f"operators by own time: {'; '.join(profiled['host_top'])}"]
    for model, row in complete.items():
        if "main_thread_profile" in row["ours"]:
            lines += ["", f"{model}, the main thread's profile of a warm pass (top functions by own time):", "```",
                      *row["ours"]["main_thread_profile"], "```"]
    if "index" in report:
        index = report["index"]
        lines += ["", f"`lsr index` of SciFact ({index['docs']} docs) with MiniLM on the GPU ({index['encoded_with']['device']}, "
                  f"{index['encoded_with']['dtype']}), batch {report['batch_size']}, model loading included (target ≤ "
                  f"{INDEX_TARGET_SECONDS:.0f} s):"]
        for name, run in (("the machine's first run", index), ("a second run", index.get("second_run"))):
            if run is not None:
                stages = ", ".join(f"{k} {v:.1f} s" for k, v in run["stage_seconds"].items())
                lines.append(f"- {name}: **{run['wall_seconds']:.1f} s** wall; stages: {stages}.")
    lines += [f"\n**{what} failed:** `{error.splitlines()[-1] if error else ''}` (the full error is in the .json)"
              for what, error in report["errors"].items()]
    lines += ["", f"Whole benchmark: {report['total_seconds']:.0f} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
