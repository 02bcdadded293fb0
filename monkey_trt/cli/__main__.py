"""`python -m monkey_trt.cli`: the console script's entry point."""

import sys

from monkey_trt.cli import main

sys.exit(main())
