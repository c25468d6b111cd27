"""``python -m kubetrain.cli``: the same as ``kubectl-train``."""

import sys

from kubetrain.cli.main import main

sys.exit(main())
