"""``python -m bat_app serve``: the web app with an embedded worker (added to bat_app.cli).

    python -m bat_app serve                          # http://127.0.0.1:7860
    python -m bat_app serve --host 0.0.0.0 --port 8080
    python -m bat_app serve --model /models/tiny --pool /pools/tiny --no-worker

The options and what they mean live in :mod:`bat_app.ui.serve` (``app.py`` parses the same
ones); this module only registers the command. Imports go one way: cli -> serve.
"""

from __future__ import annotations

import argparse

from .serve import add_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="start the web app (Gradio) with an embedded job worker",
                              description="Start the BAT Studio web app.")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .serve import serve, settings_from_args

    serve(settings_from_args(args), host=args.host, port=args.port, share=args.share, block=True)
    return 0
