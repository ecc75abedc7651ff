"""`python -m ds01.gpu_status`: the same as the `gpu-status` console script."""

import sys

from .cli import main

sys.exit(main())
