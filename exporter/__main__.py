"""`python -m exporter` runs the exporter, like `ds01 exporter`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
