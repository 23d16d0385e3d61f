"""Fine-tune a SPLADE encoder: contrastive loss over in-batch and hard negatives, FLOPS regularisation.

DATA is a BEIR name, folder or archive (its --split qrels, default train; hard negatives are mined
with BM25, or with --negatives model by the starting model's own retrieval, never a document judged
for the query), or a JSONL file of
  {"query": "...", "positive": "...", "negatives": ["...", ...], "scores": [pos, neg1, ...]}
rows, gzip'd or not ("negatives" optional; "scores" = teacher scores, adds margin-MSE distillation;
sentence-transformers' "anchor" and "negative" / "negative_1".."negative_N" columns are read as ours).
OUT becomes a model folder that SpladeEncoder.from_pretrained(OUT), `lsr index --model OUT`,
`lsr beir --model OUT` and sentence-transformers' SparseEncoder(OUT) all load. A checkpoint is
written every --checkpoint-every steps and on Ctrl-C or SIGTERM (after the current step); --resume continues (after kill -9 too) and,
with the same --seed, ends with the same weights as an uninterrupted run.

The defaults are a recipe for a small model on a CPU: many cheap steps rather than few long ones.
Documents train at 256 tokens (what `lsr index` encodes) and queries at 32, lr 1e-4, weak FLOPS
(1e-5) so nDCG is not traded for sparsity, one BM25 hard negative per query, 4 epochs (a 10%
warm-up, then linear decay; a run cut short by --max-minutes stops near the peak rate, which beat a
fully decayed schedule over so few steps). OUT gets half the trained weights + half the starting
ones (--blend 0.5): trained on SciFact or on NFCorpus, that lost nothing on the other dataset (0.8 lost
up to 0.013 nDCG@10) while keeping most of the SciFact gain and all of NFCorpus's. --blend 0.8 scored
0.013 higher on SciFact itself.

Loosely judged data (NFCorpus: 2,590 queries, 110,575 judged pairs) is handled so it does not wreck the
model: a BEIR split gives one example per query (its positive drawn each epoch from the top grade),
a document judged relevant to a query is never its in-batch negative, and the contrastive logits are
dot products × a scale fitted to each batch (--score-scale), so an over-confident model is not
pushed to shrink every vector to zero (the collapse NFCorpus showed: non-zeros 171 -> 13). When DATA
has a dev split, it is scored every --dev-every steps and OUT keeps the best weights (the starting
ones if training never beats them); a run whose document non-zeros fall below a quarter of the
first steps' stops and gives back the best weights it has. Measured on SciFact and NFCorpus:
benchmarks/results/train-scifact.md, train-nfcorpus.md.

Examples:
  lsr train scifact models/splade-scifact --max-minutes 12 --eval scifact --eval nfcorpus
  lsr train nfcorpus models/splade-nf --max-minutes 12 --eval nfcorpus    # validates on nfcorpus dev
  lsr train scifact models/splade-scifact --negatives model --hard-negatives 2
  lsr train pairs.jsonl models/mine --epochs 2 --batch-size 32 --device cuda --dtype bf16
  lsr train scifact models/splade-scifact --resume
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from lsr.cli.device import add_device_arguments, device_options
from lsr.cli.main import flags_given, name_argument, path_argument, refuse_unused
from lsr.files import check_folder_writable, missing_folders

HELP = "fine-tune a SPLADE model on a BEIR train split or JSONL pairs (contrastive + FLOPS)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lsr.train.config import FLOPS_DOC, FLOPS_DOC_INFERENCE_FREE, NEGATIVE_MINERS, TrainConfig

    d = TrainConfig()
    p.add_argument("data", type=path_argument, metavar="DATA", help="BEIR name/folder/archive, or a .jsonl(.gz) of query/positive/negatives rows")
    p.add_argument("out", type=path_argument, metavar="OUT", help="model folder to write (must be new or empty unless --resume)")
    p.add_argument("--model", type=name_argument, default=d.model, help=f"starting SPLADE model (default: {d.model})")
    p.add_argument("--split", default="train", help="BEIR qrels split to train on (default: train)")
    p.add_argument("--data-dir", default=None, type=path_argument, help="folder holding BEIR datasets (before $LSR_BEIR_DIR)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the data (default: {d.epochs})")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="train N optimiser steps, overriding --epochs: fewer or more than its passes take (the "
                        "learning rate decays over them; default: as many as --epochs take)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"queries per micro-batch; their documents are each other's negatives (default: {d.batch_size})")
    p.add_argument("--accumulate", type=int, default=d.accumulate, help="micro-batches per optimiser step (default: 1)")
    p.add_argument("--negatives", choices=NEGATIVE_MINERS, default=d.negatives,
                   help="who mines a BEIR split's hard negatives: bm25, or model = the starting model's own exact "
                        f"retrieval over the corpus (judged documents never count; default: {d.negatives})")
    p.add_argument("--hard-negatives", type=int, default=d.hard_negatives,
                   help=f"hard negatives per query and step, drawn from its mined pool (default: {d.hard_negatives})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default: {d.lr})")
    p.add_argument("--flops-query", type=float, default=d.flops_query, help=f"query FLOPS weight (default: {d.flops_query})")
    p.add_argument("--flops-doc", type=float, default=None,
                   help=f"document FLOPS weight (default: {FLOPS_DOC}; {FLOPS_DOC_INFERENCE_FREE} with --inference-free, "
                        "whose IDF-aware FLOPS weighs common terms by 1/IDF)")
    p.add_argument("--max-length", type=int, default=d.max_length, help=f"document tokens (default: {d.max_length})")
    p.add_argument("--query-max-length", type=int, default=d.query_max_length,
                   help=f"query tokens (default: {d.query_max_length})")
    p.add_argument("--inference-free", action="store_true",
                   help="train the document encoder only; queries are IDF-weighted tokens, no model (the table goes to "
                        "OUT/idf.json; --eval, dev scores and searches of a collection indexed with OUT use it), "
                        "IDF-aware FLOPS")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop training after this many minutes and save (default: no limit); loading "
                        "the data and model, mining negatives and --eval come on top")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: 100)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed for order, negatives and dropout (default: {d.seed})")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in OUT")
    p.add_argument("--eval", action="append", default=[], metavar="DATASET",
                   help="BEIR dataset whose test split is scored before and after, with a paired randomization "
                        "test; repeat it to also see what the fine-tune costs on data it never saw")
    p.add_argument("--dev-split", default=None, metavar="SPLIT",
                   help="BEIR qrels split of DATA held out for validation: scored at the start and every --dev-every "
                        "steps; OUT gets the best-scoring weights (the starting ones if training never beats them; "
                        "then --blend) and the run stops after --patience scores without a gain (default: dev when "
                        "DATA has one; none: off)")
    p.add_argument("--dev-every", type=int, default=d.dev_every, help=f"steps between dev scores (default: {d.dev_every})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"dev scores without a gain before stopping (default: {d.patience})")
    p.add_argument("--collapse-fraction", type=float, default=d.collapse_fraction,
                   help="stop (and give back the best weights) when training documents' non-zeros fall below this "
                        "share of the first steps'; 0 = never, for deliberately strong --flops-doc "
                        f"(default: {d.collapse_fraction})")
    p.add_argument("--blend", type=float, default=d.blend, metavar="SHARE",
                   help="OUT's weights = this share of the trained ones + the rest of the starting ones (weight-space "
                        "ensembling): keeps more of what the model knew about data it was not trained on; 1 = the "
                        f"trained weights alone (default: {d.blend})")
    p.add_argument("--score-scale", type=float, default=None,
                   help="contrastive logits = this × dot product (default: fitted to each batch's scores, at most 1, "
                        "so an over-confident model is not pushed to shrink all its vectors; 1 = raw scores)")
    add_device_arguments(p)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: every CPU this process may use). When other work holds those CPUs "
                        "at the start, the threads wait passively at each barrier instead of spinning "
                        "(OMP_WAIT_POLICY=PASSIVE, unless you set it: the same weights, and on 2 cores with one busy "
                        "an epoch of SciFact in 55 s instead of 100)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lsr.train.config import TrainConfig

    config = TrainConfig(model=args.model, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                         accumulate=args.accumulate,
                         hard_negatives=args.hard_negatives, negatives=args.negatives, lr=args.lr,
                         flops_query=args.flops_query, flops_doc=args.flops_doc,
                         max_length=args.max_length, query_max_length=args.query_max_length, seed=args.seed,
                         inference_free=args.inference_free, score_scale=args.score_scale,
                         dev_every=args.dev_every, patience=args.patience, collapse_fraction=args.collapse_fraction,
                         blend=args.blend)
    config.check()  # bad numbers fail before any data or model loads
    say = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    from lsr.encode.cpu_share import choose_wait_policy, usable_cpus

    # chosen before torch loads (OpenMP reads its wait policy once, then), said once the data holds: a bad file is
    # one line
    waiting = None if args.device.startswith("cuda") else choose_wait_policy(args.threads or usable_cpus())
    from lsr.encode.cpu_threads import set_threads

    set_threads(args.threads)
    if args.max_minutes is not None and not 0 < args.max_minutes < math.inf:
        raise ValueError(f"--max-minutes must be a positive number of minutes, got {args.max_minutes}")
    if args.checkpoint_every <= 0:
        raise ValueError(f"--checkpoint-every must be positive, got {args.checkpoint_every}")
    out = Path(args.out)
    _check_out_apart_from_model(out, config.model)
    _check_out(out, args.resume)
    if args.resume:
        from lsr.train.loop import check_resume_settings

        check_resume_settings(out, config)
    _check_lengths(config)
    encoding = device_options(args, concrete_dtype=True)  # one SPLADE model: its report names the dtype it ran
    from lsr.train.data import load_examples, model_miner
    from lsr.train.loop import check_accumulate

    _check_data_file(args.data)
    dev_split = _dev_split(args)  # before any mining, so a missing split fails at once
    if dev_split is None:  # they were taken and ignored, then refused a --resume that changed them
        refuse_unused(flags_given(args, "dev_every", "patience"), "this run has no held-out split to validate on (--dev-split)")
    _check_eval_datasets(args.eval, args.data_dir)
    _check_eval_held_out(args, dev_split)
    model = None
    if config.negatives == "model":  # the model mines before it trains (a resume mines the same pool again)
        model = _load(config, encoding)
    examples = load_examples(args.data, args.split, data_dir=args.data_dir,
                             miner=None if model is None else model_miner(model.encoder, progress=not args.quiet))
    _check_negatives(config, examples, args.data)
    check_accumulate(config, len(examples))  # before any scoring or model load
    if waiting:
        say(waiting)
    say(f"{len(examples):,} training example{'s' * (len(examples) != 1)} from {args.data}")
    return _train(args, config, examples, out, encoding, say, model or _load(config, encoding), dev_split)


def _check_data_file(data: str) -> None:
    """A DATA file is training rows (named .jsonl or .jsonl.gz) or a BEIR archive: JSONL rows in pairs.json were
    refused as "not a BEIR folder, .zip or .tar.gz archive", which never said how a training file is recognised."""
    import tarfile
    import zipfile

    from lsr.train.data import is_jsonl

    path = Path(data)
    if path.is_file() and not is_jsonl(data) and not (zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
        raise ValueError(f"{data} is neither a training file (named .jsonl or .jsonl.gz) nor a BEIR .zip or .tar.gz "
                         "archive; name a file of JSONL training rows .jsonl")


def _check_negatives(config, examples: list, data: str) -> None:
    """A query with no negative has a contrastive loss of 0: such a run trained only the FLOPS term (sparser, no
    better) and exited 0. Negatives come from the other examples' positives in a batch, unless judged relevant to
    the query (so rows that all share one query, or one positive, give none), or from each example's own list."""
    from lsr.train.data import is_jsonl
    from lsr.train.loop import relevant_by_query

    relevant = relevant_by_query(examples)
    documents = {doc for example in examples for doc in example.positives}
    others = any(len(judged & documents) < len(documents) for judged in relevant.values())
    in_batch = min(config.batch_size, len(examples)) > 1 and others
    own = config.hard_negatives > 0 and any(negative not in relevant[example.query]
                                            for example in examples for negative in example.negatives)
    if not (in_batch or own):
        few = config.batch_size == 1 or len(examples) == 1
        why = ("with --batch-size 1" if config.batch_size == 1 else "with one example" if len(examples) == 1 else
               "with every positive relevant to every query (one query, or one positive, in all the rows)")
        remedy = ("use a --batch-size of 2 or more (and more than one example)" if few else
                  "give rows with other queries and other positives")
        raise ValueError(f"nothing to learn from: {why} "
                         "a query has no in-batch negatives, and "
                         + ("--hard-negatives 0 draws none of its own" if config.hard_negatives == 0 else
                            f"{data} gives no \"negatives\"" if is_jsonl(data) else
                            f"{data}'s corpus holds no unjudged document to mine as one")
                         + f"; {remedy}, or give negatives")


def _check_eval_datasets(names: list[str], data_dir: str | None) -> None:
    """Each --eval dataset found, with test qrels, before the model loads (a misspelt one failed after it, leaving an
    empty OUT)."""
    from lsr.eval.datasets import locate_dataset
    from lsr.ingest.beir_source import BeirSource

    for name in dict.fromkeys(names):
        if not BeirSource(locate_dataset(name, data_dir)).has("qrels/test.tsv"):
            raise ValueError(f"--eval {name}: it has no qrels/test.tsv to score; --eval takes a BEIR dataset with a "
                             "test split")


def _check_eval_held_out(args: argparse.Namespace, dev_split: str | None) -> None:
    """--eval scores DATA's own test split only when training and validation stay off it: `--split test --eval DATA`
    printed a test "gain" measured on the training queries, and `--dev-split test` one on the queries that picked
    the kept weights, with a p-value, as if held out."""
    from lsr.eval.datasets import locate_dataset
    from lsr.train.data import is_jsonl

    use = "trains" if args.split == "test" else "validates" if dev_split == "test" else None
    if use is None or is_jsonl(args.data) or not args.eval:
        return
    data = _qrels_digest(locate_dataset(args.data, args.data_dir))
    for name in dict.fromkeys(args.eval):
        if _qrels_digest(locate_dataset(name, args.data_dir)) == data:
            raise ValueError(f"--eval {name} scores the test split this run {use} on, so its before/after would not "
                             "be held out; train and validate on other splits (--split, --dev-split), or --eval "
                             "another dataset")


def _qrels_digest(path: Path, split: str = "test") -> str:
    """A digest of a BEIR dataset's qrels/SPLIT.tsv, which tells one dataset (or split) apart from another however
    it is found: compared by path, a folder and an archive of one dataset (`lsr train ./scifact --split test --eval
    scifact`) passed as two."""
    import hashlib

    from lsr.ingest.beir_source import BeirSource

    source = BeirSource(path)
    if not source.has(f"qrels/{split}.tsv"):
        return f"{path.resolve()}/{split}"  # no such split to compare (--eval then says it has none)
    with source.open(f"qrels/{split}.tsv") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _dev_split(args: argparse.Namespace) -> str | None:
    """The held-out split to validate on: as asked (it must exist), else dev when a BEIR DATA has it, else none."""
    from lsr.eval.datasets import judges_any_document, locate_dataset, nothing_to_find
    from lsr.ingest.beir_source import BeirSource
    from lsr.train.data import is_jsonl

    if is_jsonl(args.data):  # --split and --data-dir were read by nobody; --data-dir still finds --eval's datasets
        refuse_unused(flags_given(args, "split", *([] if args.eval else ["data_dir"])),
                      f"{args.data} is a JSONL file, its rows the training examples (they choose a BEIR split)")
    if args.dev_split == "none" or (args.dev_split is None and is_jsonl(args.data)):
        return None
    if is_jsonl(args.data):
        raise ValueError("--dev-split needs a BEIR DATA; a JSONL file has no held-out split")
    split = args.dev_split or "dev"
    if split == args.split:
        if args.dev_split is None:
            return None  # training on dev: nothing held out
        raise ValueError(f"--dev-split {split} is the split being trained on; choose another (or none)")
    source = locate_dataset(args.data, args.data_dir)
    if BeirSource(source).has(f"qrels/{split}.tsv"):
        if _qrels_digest(source, split) == _qrels_digest(source, args.split):  # validated on the training queries
            raise ValueError(f"{args.data}'s qrels/{split}.tsv is its qrels/{args.split}.tsv, the split being trained "
                             "on, so validating on it would not be held out; choose another --dev-split (or none)")
        if not judges_any_document(source, split):  # every score 0: step 0's weights were kept, and exit 0
            raise ValueError(nothing_to_find(args.data, split))
        return split
    if args.dev_split is None:
        return None
    raise ValueError(f"{args.data} has no qrels/{split}.tsv to validate on; pass another --dev-split, or none")


def _load(config, encoding: dict[str, str]):
    """The starting model; its encoder keeps the inference lengths, so mining and --eval see what `lsr index` will."""
    from lsr.train.model import TrainableSplade

    return TrainableSplade.load(config.model, **encoding)


def _check_lengths(config) -> None:
    """Lengths the model has positions for, before any data loads (a longer one failed at the first text that long)."""
    import transformers

    from lsr.encode.models import load_with_hint

    positions = getattr(load_with_hint(config.model, transformers.AutoConfig.from_pretrained), "max_position_embeddings", None)
    for flag, length in (("--max-length", config.max_length), ("--query-max-length", config.query_max_length)):
        if isinstance(positions, int) and length > positions:
            raise ValueError(f"{flag} {length} is more than the {positions} token positions {config.model} has")


def _check_out(out: Path, resume: bool) -> None:
    """A checkpoint write that a kill -9 cut short leaves only a temporary file: OUT is still empty then."""
    from lsr.train.checkpoint import CHECKPOINT_FILE, leftovers

    if resume:
        if not (out / CHECKPOINT_FILE).is_file():
            raise ValueError(f"nothing to resume: {out} holds no {CHECKPOINT_FILE}")
    elif (out / CHECKPOINT_FILE).is_file():
        raise ValueError(f"{out} holds an unfinished run; add --resume to continue it, or choose another folder")
    elif out.exists() and (not out.is_dir() or set(out.iterdir()) - set(leftovers(out))):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose a new OUT")
    check_folder_writable(out, "the model folder")  # not once the data and the model have loaded


def _check_out_apart_from_model(out: Path, model: str) -> None:
    """OUT neither is nor lies inside a --model folder: its files would change that folder's, which a resume
    fingerprints, so every --resume of the run was refused as "the --model folder's files differ"."""
    from lsr.encode.models import BUNDLED

    folder = Path(model).expanduser()
    if model not in BUNDLED and folder.is_dir() and out.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"OUT {out} {'is' if out.resolve() == folder.resolve() else 'lies inside'} the --model "
                         f"folder {model}; write the trained model to a folder outside it")


def _train(args, config, examples, out: Path, encoding: dict[str, str], say, model, dev_split: str | None) -> int:
    """One run per OUT: a second `lsr train OUT --resume` while this one runs would interleave the checkpoints."""
    from lsr.files import exclusive_folder

    created = missing_folders(out)
    try:
        with exclusive_folder(out):
            _check_out(out, args.resume)  # again, now that OUT is ours: a run that held it may have finished meanwhile
            return _train_in(args, config, examples, out, encoding, say, model, dev_split)
    except BaseException:
        for folder in created:  # a run that failed before its first checkpoint leaves no empty OUT, nor its parents
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _train_in(args, config, examples, out: Path, encoding: dict[str, str], say, model, dev_split: str | None) -> int:
    from lsr.cli.index import resume_command
    from lsr.train.checkpoint import CHECKPOINT_FILE
    from lsr.eval.metrics import RANDOMIZATION_TEST, randomization_p
    from lsr.train.evaluate import quality_scorer
    from lsr.cli.upsert import uninterrupted
    from lsr.files import write_json_atomic
    from lsr.train.export import save_model_folder
    from lsr.train.loop import idf_queries, train

    if config.inference_free:
        idf_queries(model, examples)  # before any scoring: the variant is scored with its IDF queries, as it will serve
    elif model.encoder.idf_queries:  # the export would silently be a symmetric model: its queries run the model
        print(f"warning: {config.model} ships idf.json (its queries are IDF weights, no model); without --inference-free "
              "this run trains and exports a symmetric model, whose queries run the model", file=sys.stderr)
    queries = model.query_encoder()
    evaluations = {}  # each scores the encoder's weights as they are at the call: before, then after training
    for dataset in dict.fromkeys(args.eval):
        evaluations[dataset] = quality_scorer(model.encoder, dataset, "test", data_dir=args.data_dir,
                                              progress=not args.quiet, query_encoder=queries)
    before = {dataset: evaluation() for dataset, evaluation in evaluations.items()}
    for dataset, (scores, _) in before.items():
        say(f"before: {dataset} nDCG@10 {scores['ndcg@10']:.4f}, doc non-zeros {scores['doc_nnz']:.1f}")
    validate = None
    if dev_split is not None:
        dev = quality_scorer(model.encoder, args.data, dev_split, data_dir=args.data_dir, query_encoder=queries)
        validate = lambda: dev()[0]["ndcg@10"]  # noqa: E731
        say(f"validating on {args.data} {dev_split} every {config.dev_every} steps; OUT keeps the best weights")
    clock = time.monotonic()
    try:
        result = train(model, examples, out, config, resume=args.resume, max_minutes=args.max_minutes,
                       checkpoint_every=args.checkpoint_every, progress=not args.quiet, validate=validate,
                       validation=dev_split)
    except KeyboardInterrupt as stop:  # a second Ctrl-C, or one in the closing dev scoring: main said "interrupted"
        if not (out / CHECKPOINT_FILE).is_file():
            raise
        stopped_by = signal.Signals(getattr(stop, "signum", signal.SIGINT))  # main's Terminated: SIGTERM or SIGHUP
        print(f"interrupted ({stopped_by.name}); the training up to its last checkpoint is in {out / CHECKPOINT_FILE}. "
              f"Continue with: {resume_command(args._argv)}", file=sys.stderr)
        return 128 + stopped_by
    if result.stopped == "interrupted":
        print(f"interrupted ({signal.Signals(result.signal).name}) at step {result.steps} of {result.total_steps}; "
              f"checkpoint in {out / CHECKPOINT_FILE}. Continue with: {resume_command(args._argv)}", file=sys.stderr)
        return 128 + result.signal
    finished = False  # set once the summary is written: the run is whole, and a stop after it resumes nothing
    try:  # the training is done and checkpointed: a stop from here on resumes to export and score
        save_model_folder(model, out)
        evals = []
        for dataset, evaluation in evaluations.items():
            (first, first_by_query), (after, after_by_query) = before[dataset], evaluation()
            evals.append({"dataset": dataset, "before": first, "after": after,
                          "p_value": randomization_p(first_by_query, after_by_query),
                          "test": f"{RANDOMIZATION_TEST} over the test queries' nDCG@10"})
        summary = {"model": config.model, "data": args.data, "examples": len(examples), "config": asdict(config),
                   "steps": result.steps, "total_steps": result.total_steps, "stopped": result.stopped,
                   "dev_split": dev_split, "dev_scores": result.dev_scores, "kept": result.kept,
                   "train_seconds": round(result.seconds, 1), "wall_seconds": round(time.monotonic() - clock, 1),
                   "first_step": result.first_step,
                   "last_step": result.last_step,
                   "skipped_steps": result.skipped_steps,  # fp16 overflows, a resumed run's before it too
                   "eval": evals, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), **encoding}
        with uninterrupted():  # a stop here said "Continue with: --resume" of a run whose checkpoint it removed
            write_json_atomic(out / "lsr_train.json", summary)
            if result.stopped != "time limit":  # finished, or the guard ended it: nothing to resume now that the
                (out / CHECKPOINT_FILE).unlink(missing_ok=True)  # summary is written (a Ctrl-C in --eval left no way)
            finished = True
        print(_summary_text(summary, out))
        if result.stopped == "time limit":
            print(f"{out / CHECKPOINT_FILE} is kept (delete it if done); to train on from step {result.steps}: "
                  f"{resume_command(args._argv)}")
        return 0
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM or SIGHUP (main's Terminated)
        if finished:  # the model and its summary are written: main says "interrupted", with nothing to resume
            raise
        stopped_by = signal.Signals(getattr(stop, "signum", signal.SIGINT))
        print(f"interrupted ({stopped_by.name}) after step {result.steps} of {result.total_steps}, while writing the "
              f"model and its scores; the training is in {out / CHECKPOINT_FILE}. Continue with: "
              f"{resume_command(args._argv)}", file=sys.stderr)
        return 128 + stopped_by


def _duration(seconds: float) -> str:
    """"12 s" or "3.4 min": a short run said "in 0.0 min"."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _summary_text(summary: dict, out: Path) -> str:
    examples = summary["examples"]
    lines = [f"trained {summary['model']} on {summary['data']} ({examples:,} example{'s' * (examples != 1)}): "
             f"{summary['steps']:,} of {summary['total_steps']:,} steps ({summary['stopped']}) "
             f"in {_duration(summary['train_seconds'])} on {summary['device']} {summary['dtype']}"]
    if summary["dev_scores"]:
        lines.append(f"{summary['dev_split']} nDCG@10 by step: "
                     + ", ".join(f"{step} {score:.4f}" for step, score in summary["dev_scores"]))
    if summary["kept"]:
        lines.append(f"{summary['stopped']}: {summary['kept']}")
    blend = summary["config"]["blend"]
    if (summary["kept"] or "").startswith("kept the weights of step 0 "):  # a blend of the start with itself
        lines.append(f"OUT is {summary['model']} unchanged: "
                     + (f"training never beat it on {summary['dev_split']}" if summary["dev_split"] else
                        "the run collapsed, and without dev scores its starting weights are the last known good ones"))
    elif blend < 1:
        lines.append(f"OUT holds {blend:g} × the trained weights + {1 - blend:g} × {summary['model']}'s (--blend)")
    first, last = summary["first_step"], summary["last_step"]
    if first and last:
        lines.append(f"loss {first['loss']:.3f} at step {first['step']:,} -> {last['loss']:.3f} at step {last['step']:,}; "
                     f"non-zeros per query {last['nnz_q']:.0f}, "
                     f"per document {last['nnz_d']:.0f}")
    for scored in summary["eval"]:
        before, after = scored["before"], scored["after"]
        lines.append(f"{scored['dataset']} test nDCG@10 {before['ndcg@10']:.4f} -> {after['ndcg@10']:.4f} "
                     f"({after['ndcg@10'] - before['ndcg@10']:+.4f}, p {scored['p_value']:.4f}, paired randomization "
                     f"test); doc non-zeros {before['doc_nnz']:.1f} -> {after['doc_nnz']:.1f}")
    from lsr.encode.splade import is_causal_folder

    loaders = ("SpladeEncoder.from_pretrained and lsr index --model load it as a DecoderSpladeEncoder"
               if is_causal_folder(str(out)) else "SpladeEncoder.from_pretrained, lsr index --model, SparseEncoder all "
               "load it")
    lines.append(f"wrote {out} ({loaders})")
    if summary["config"]["inference_free"]:
        lines.append("inference-free: queries are the IDF weights in idf.json, with no model; searches of a collection "
                     "indexed with it use them by default" + ("" if is_causal_folder(str(out)) else
                                                             ", and so does SparseEncoder.encode_query"))
    return "\n".join(lines)
