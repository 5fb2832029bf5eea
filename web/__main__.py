"""`python -m web`: the same as `recap-status web`."""

import sys

from tracker.cli import main

sys.exit(main(["web"]))
