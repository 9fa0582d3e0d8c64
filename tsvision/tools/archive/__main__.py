"""``python -m tsvision.tools.archive``: the same as ``tsvision archive`` (the ``tsvision-archive`` console script)."""

import sys

from tsvision.tools.archive.cli import main

sys.exit(main())
