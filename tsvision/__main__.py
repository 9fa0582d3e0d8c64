"""``python -m tsvision COMMAND``: the same as the ``tsvision`` command."""

import sys

from tsvision.tools.cli import main

sys.exit(main())
