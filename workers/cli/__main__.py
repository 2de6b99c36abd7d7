"""``python -m workers.cli``: the ``metallm`` command."""

import sys

from workers.cli import main

sys.exit(main())
