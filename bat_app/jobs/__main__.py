"""``python -m bat_app.jobs COMMAND``: the job commands on their own (see bat_app.jobs.cli)."""

import sys

from .cli import main

sys.exit(main())
