"""``python -m benchmarks``: see :mod:`benchmarks` and ``--help``."""

import sys

from benchmarks.run import main  # standard library only at import: --threads is applied first

sys.exit(main())
