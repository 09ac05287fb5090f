"""``python -m hyperspy_mlspec``: the same as the ``hyperspy-mlspec`` command."""

import sys

from hyperspy_mlspec.cli import main

if __name__ == "__main__":
    sys.exit(main())
