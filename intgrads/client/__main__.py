"""``python -m intgrads.client``: the ``intgrads-client`` command."""

import sys

from .cli import main

sys.exit(main())
