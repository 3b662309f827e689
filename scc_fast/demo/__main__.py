"""``python -m scc_fast.demo [--quick] --out DIR``."""

import sys

from . import main

sys.exit(main())
