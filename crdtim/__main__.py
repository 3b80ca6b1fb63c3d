"""`python -m crdtim`: the command line of crdtim/cli.py, nothing else."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
