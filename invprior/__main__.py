"""``python -m invprior``: the ``invprior`` command."""

import sys

from invprior.console import console

sys.exit(console())
