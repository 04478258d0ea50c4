"""``python -m bat_app serve``: the web app with an embedded worker (added to bat_app.cli).

    python -m bat_app serve                          # http://127.0.0.1:7860
    python -m bat_app serve --host 0.0.0.0 --port 8080
    python -m bat_app serve --model /models/tiny --pool /pools/tiny --no-worker
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="start the web app (Gradio) with an embedded job worker",
                              description="Start the BAT Studio web app.")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, or "
                   "GRADIO_SERVER_NAME; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--model", default=None, help="default backbone: preset, diffusers folder or hub id "
                   "(env BAT_MODEL; default sd15 with CUDA, else shapes)")
    p.add_argument("--pool", default=None, help="default backbone pool folder, 'shapes' or 'none' (env BAT_POOL)")
    p.add_argument("--no-worker", action="store_true", help="do not run jobs in this process "
                   "(run `python -m bat_app worker` elsewhere; env BAT_EMBEDDED_WORKER=0)")


def run(args: argparse.Namespace) -> int:
    from .serve import serve
    from .settings import AppSettings

    overrides = {}
    if args.model:
        overrides["model"] = args.model
        if not args.pool:
            overrides["pool"] = "shapes" if args.model == "shapes" else None
    if args.pool:
        overrides["pool"] = None if args.pool == "none" else args.pool
    if args.no_worker:
        overrides["embedded_worker"] = False
    serve(AppSettings.from_env(**overrides), host=args.host, port=args.port, share=args.share, block=True)
    return 0
