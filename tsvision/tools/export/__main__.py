"""``python -m tsvision.tools.export``: the same as ``tsvision export`` (the ``tsvision-export`` console script)."""

import sys

from tsvision.tools.export.cli import main

sys.exit(main())
