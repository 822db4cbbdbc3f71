"""``python -m sfpk``: the same as the ``sfpk`` command."""

import sys

from .cli import main

sys.exit(main())
