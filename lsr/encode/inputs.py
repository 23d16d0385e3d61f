"""What every encoder does before its forward pass: tokenise thread-safely, cut to length, pick the device and dtype
(checking the texts is `texts.py`, which a BM25 search uses without torch)."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lsr.encode.st_folder import declared_max_tokens

DEFAULT_MAX_TOKENS = 512  # BERT's position limit: what a model with no stated limit gets, so paragraph-long queries fit


def token_ids(tokenizer: Any, texts: list[str], **options: Any) -> list[list[int]]:
    """``tokenizer(texts, **options)["input_ids"]``, one call at a time per tokenizer object.

    A fast tokenizer re-applies its truncation and padding settings inside a call, mutating its Rust
    state; two threads overlapping there fail with "Already borrowed". Serialising only this call
    lets the forward passes of concurrent encodes (the service's micro-batches) run in parallel.
    """
    with _call_lock(tokenizer):
        return tokenizer(texts, verbose=False, **options)["input_ids"]


# Kept beside the tokenizers, not on them: a lock in a tokenizer's __dict__ made it, and every encoder holding it,
# fail to pickle (a spawn pool, datasets.map) and to deepcopy after the first encode.
_call_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()
_shared_lock = threading.Lock()  # for tokenizers a weak map cannot key (unhashable, no weak references)


def _call_lock(tokenizer: Any) -> threading.Lock:
    with _locks_lock:
        try:
            return _call_locks.setdefault(tokenizer, threading.Lock())
        except TypeError:
            return _shared_lock


@dataclass
class EncodeInfo:
    """Per-text facts of one encode call that callers may surface (e.g. the service flags truncation)."""

    truncated: np.ndarray  # bool per input text
    n_tokens: np.ndarray  # int per input text, before truncation (at least that many for a long text cut unread)


# A text longer than this many characters per kept token is tokenised from a prefix that ends before a word break:
# SciFact's documents average 4.5 characters a token, and a tokenizer that reads words one by one gives that prefix's
# tokens exactly as the whole text's first ones. A 50,000-character document costs what its first 1,536 do
# (max_length 256), and a 4 MB query no more than the few thousand characters it keeps.
PREFIX_CHARS_PER_TOKEN = 6


def truncated_token_ids(tokenizer: Any, texts: list[str], max_length: int,
                        specials: bool = True) -> tuple[list[list[int]], np.ndarray]:
    """Token ids with special tokens, cut to ``max_length`` keeping the special tokens the tokenizer appends (as its
    own truncation does), and every text's length before the cut; ``specials`` False: the text's own tokens only.

    A tokenizer with ``word_prefix`` (``native_bert``'s WordPiece: a text cut where its tokens stay the whole
    text's first ones) reads a long text only up to ``PREFIX_CHARS_PER_TOKEN x max_length`` characters, four
    times as far while that falls short; a cut text's length is then its prefix's, a lower bound that is still
    over ``max_length``.
    """
    enc: list = [None] * len(texts)
    word_prefix = getattr(tokenizer, "word_prefix", None)
    reach = PREFIX_CHARS_PER_TOKEN * max_length if word_prefix is not None else None
    todo = list(range(len(texts)))
    while todo:
        prefixes = [texts[i] if reach is None else word_prefix(texts[i], reach) for i in todo]
        short = []
        for i, prefix, ids in zip(todo, prefixes, token_ids(tokenizer, prefixes, add_special_tokens=specials,
                                                             truncation=False)):
            if prefix is not texts[i] and len(ids) <= max_length:
                short.append(i)  # long words: the prefix holds too few tokens to know the first max_length
            else:
                enc[i] = ids
        todo, reach = short, reach and 4 * reach
    lengths = np.fromiter((len(ids) for ids in enc), dtype=np.int64, count=len(enc))
    tail = _appended_specials(tokenizer) if specials else 0
    return [ids[: max_length - tail] + ids[len(ids) - tail :] if len(ids) > max_length else ids for ids in enc], lengths


def _appended_specials(tokenizer: Any) -> int:
    """How many special tokens the tokenizer appends after a text (BERT: [SEP]), read once from a sample.

    Not "the trailing ids that are special": an [UNK] (an emoji, a 100-character word) or a literal "[SEP]" at the
    cut was kept in place of the last word, and 512 emoji kept more than max_length ids, which crashed the model.
    """
    found = tokenizer.__dict__.get("_lsr_appended_specials")
    if found is None:
        bare = token_ids(tokenizer, ["a"], add_special_tokens=False, truncation=False)[0]
        full = token_ids(tokenizer, ["a"], add_special_tokens=True, truncation=False)[0]
        starts = [i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare]
        found = len(full) - starts[0] - len(bare) if starts and bare else 0
        tokenizer.__dict__["_lsr_appended_specials"] = found
    return found


TRUNCATION_WARNING = "%d of %d texts were longer than %d tokens and were truncated (longest: at least %d tokens)"


def report_truncation(log: logging.Logger, n_tokens: np.ndarray, max_length: int) -> EncodeInfo:
    """EncodeInfo for texts of ``n_tokens`` tokens, with one warning when any was cut at ``max_length``."""
    truncated = n_tokens > max_length
    if truncated.any():
        log.warning(TRUNCATION_WARNING, int(truncated.sum()), len(n_tokens), max_length, int(n_tokens.max()))
    return EncodeInfo(truncated, n_tokens)


def model_max_tokens(folder: str, tokenizer: Any) -> int:
    """The longest input a model folder declares (``declared_max_tokens``), else ``DEFAULT_MAX_TOKENS``.

    This is how ``SentenceTransformer`` sizes its inputs, so our vectors match its for the same folder."""
    return declared_max_tokens(folder, getattr(tokenizer, "model_max_length", None)) or DEFAULT_MAX_TOKENS


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Asking for a GPU that is not there raises ValueError with one line saying what torch sees,
    so the CLI can print it and exit 2 instead of failing later inside a forward pass.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"device {device!r} asked for, but torch {torch.__version__} ({build}) sees no CUDA GPU; "
                             "use the device cpu or auto (--device on the command line)")
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise ValueError(f"device {device!r} asked for, but this machine has {count} CUDA GPU(s): cuda:0..cuda:{count - 1}")
    return chosen


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there a bf16 GEMM runs about twice
    as fast as fp32; elsewhere oneDNN emulates it and it runs slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, *, cpu_bf16: bool = False) -> torch.dtype | None:
    """``auto``: bf16 on a GPU that supports it (fp16 on older ones), fp32 on CPU; None keeps the model's own dtype.

    ``cpu_bf16`` (the dense encoder) makes ``auto`` bf16 on a CPU with native bf16 too: MiniLM encodes SciFact's
    documents 2.1x faster there and a lone query 1.6x, with cosines ≥ 0.9999 to fp32 and nDCG@10 within 0.001.
    SPLADE stays fp32 on CPU: its exact int8 screen needs fp32.
    """
    if isinstance(dtype, torch.dtype) and not dtype.is_floating_point:  # int8 failed in torch's .to, complex at encode
        raise ValueError(f"dtype must be a floating-point type (auto, {', '.join(DTYPES)}), got {dtype}")
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if cpu_bf16 and cpu_has_native_bf16() else torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (fp32, bf16, fp16) of a torch dtype, for metadata and benchmark tables."""
    return next((name for name, value in DTYPES.items() if value == dtype), str(dtype).replace("torch.", ""))
