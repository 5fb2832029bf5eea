import sys

from .cli import main

sys.exit(main(["tracker", *sys.argv[1:]]))
