"""``python -m ranksearch``: the same as the ``ranksearch`` command."""

import sys

from .cli import main

sys.exit(main())
