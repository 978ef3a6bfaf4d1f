"""``python -m invprior``: the ``invprior`` command."""

import sys

from invprior.cli import console

sys.exit(console())
