"""``python -m intgrads.batch``: the ``intgrads-batch`` command."""

import sys

from .cli import main

sys.exit(main())
