"""``python -m bat_app``: the command line (see bat_app.cli)."""

import sys

from .cli import main

sys.exit(main())
