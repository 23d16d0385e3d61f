"""The ``lsr`` command line: ``main`` is the front door, each verb lives in its own module here."""

from lsr.cli.main import main

__all__ = ["main"]
