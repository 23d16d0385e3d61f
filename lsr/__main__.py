"""``python -m lsr`` runs the same command line as the ``lsr`` script."""

import sys

from lsr.cli import main

sys.exit(main())
