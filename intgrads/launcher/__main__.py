"""``python -m intgrads.launcher``: the ``intgrads`` command."""

import sys

from .cli import main

sys.exit(main())
