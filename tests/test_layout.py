"""The package layout's promises: a cheap lazy top-level API, `python -m lsr`, and an index that does not import upward."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ("SpladeEncoder", "DecoderSpladeEncoder", "InferenceFreeQueryEncoder", "DenseEncoder", "Searcher", "SparseBatch")


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_import_lsr_loads_no_torch_and_no_stage_module():
    loaded = _run("import sys, lsr; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('lsr.')))")
    assert loaded == "[]"


def test_top_level_names_resolve_to_their_stage_classes():
    out = _run(f"from lsr import {', '.join(PUBLIC)}; print(' '.join(c.__module__ for c in ({', '.join(PUBLIC)})))")
    assert out.split() == ["lsr.encode.splade"] * 3 + ["lsr.encode.dense", "lsr.search.searcher", "lsr.sparse"]


def test_unknown_top_level_name_is_an_attribute_error():
    import lsr

    with pytest.raises(AttributeError, match="NoSuchThing"):
        lsr.NoSuchThing  # noqa: B018



def test_the_lazy_loaders_annotations_resolve():
    """``lsr.__getattr__`` was annotated ``-> Any`` without importing it: typing.get_type_hints (documentation tools,
    runtime type checkers) raised NameError on the package's own entry point."""
    import typing

    import lsr

    import lsr.service

    assert typing.get_type_hints(lsr.__getattr__) == {"name": str, "return": object}
    for function in (lsr.numba_cache_folder, lsr.service.__getattr__):  # annotations a type checker alone imports
        assert typing.get_type_hints(function)

def test_python_dash_m_lsr_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "lsr", "--help"], check=True, capture_output=True, text=True).stdout
    assert out.startswith("usage: lsr") and "index" in out and "serve" in out


def test_index_imports_from_lsr_only_the_shared_modules():
    shared = {"lsr.sparse", "lsr.files"}
    upward = set()
    for path in (ROOT / "index").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "lsr":
                upward.add(node.module)
            elif isinstance(node, ast.Import):
                upward.update(a.name for a in node.names if a.name.split(".")[0] == "lsr")
    assert upward <= shared, f"index/ imports {sorted(upward - shared)} from lsr"


def test_lsr_keeps_at_most_two_loose_modules():
    loose = {p.name for p in (ROOT / "lsr").glob("*.py")} - {"__init__.py", "__main__.py"}
    assert loose == {"sparse.py", "files.py"}


def test_the_checkouts_kernels_folder_does_not_shadow_an_installed_kernels_package():
    """From the checkout (cwd on sys.path, as under pytest and `python -m`), `import kernels` must be Hugging Face's
    package, which transformers 5.x imports when installed; lsr's own stays lsr.kernels."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("kernels")
        installed = True
    except PackageNotFoundError:
        installed = False
    code = "import lsr.kernels\nimport kernels\nprint(getattr(kernels, '__file__', None))\nprint(lsr.kernels.splade_max_pool.__module__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    found, pooling = done.stdout.split()
    assert pooling == "lsr.kernels.pool"
    if installed:
        assert not Path(found).is_relative_to(ROOT / "kernels") and "site-packages" in found
    else:  # the empty namespace package the next test describes
        assert found == "None"


def test_without_hugging_faces_kernels_the_checkouts_folder_reads_as_absent_without_raising():
    """transformers 5.17 finds a `kernels` spec, then imports it for a version and lets any ImportError escape: from
    a checkout without the package (python -S hides site-packages) `import kernels` must give a module with no
    file and no version (what it reads as "not installed"), and the names a user would import from it are missing."""
    code = ("import importlib, importlib.util\nk = importlib.import_module('kernels')\n"
            "print(getattr(k, '__file__', None), getattr(k, '__version__', 'N/A'), importlib.util.find_spec('kernels') is not None)\n"
            "try:\n    from kernels import get_kernel\nexcept ImportError:\n    print('no get_kernel')")
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["None N/A True", "no get_kernel"]
