"""Pooling kernels: SPLADE's LM head + activation + masked max-pool without B×L×V logits.

Installed, this folder is ``lsr.kernels``. Run from a checkout (``python -m``, pytest), the repository root is on
sys.path and the folder would also answer ``import kernels``: the name of Hugging Face's package, which transformers
(5.x) imports whenever it is installed. Under that name the folder hands the import over to the installed package,
or, where there is none, answers with an empty namespace package (no ``__file__``, no ``__version__``).
"""

if __name__ == "kernels":
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.machinery.PathFinder.find_spec(
        __name__, [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout])
    if _spec is None:  # not installed: an empty namespace package, which transformers' check reads as absent (an
        # ImportError here would escape transformers 5.17's check and break `import transformers` from a checkout)
        sys.modules[__name__] = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(__name__, None,
                                                                                            is_package=True))
    else:
        sys.modules[__name__] = _installed = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_installed)
else:
    from .pool import splade_max_pool

    __all__ = ["splade_max_pool"]
