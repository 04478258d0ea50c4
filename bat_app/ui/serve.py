"""Start the app: an embedded worker (the app runs jobs itself) and the Gradio server.

    python app.py                                   # what a Hugging Face Space runs
    python -m bat_app serve --host 0.0.0.0 --port 7860
    demo, worker = serve(settings, block=False)     # tests: returns once the server is up

Host and port default to Gradio's (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860;
Spaces set both). With BAT_EMBEDDED_WORKER=0 jobs wait for separate ``python -m bat_app worker``s.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading

from ..errors import BatError
from .settings import AppSettings

log = logging.getLogger(__name__)


def serve(settings: AppSettings | None = None, *, host: str | None = None, port: int | None = None,
          share: bool = False, block: bool = True, quiet: bool = False):
    """Build and launch the app; returns (demo, embedded worker or None)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..jobs import start_embedded_worker
    from .app import build_app, launch_options

    settings = settings or AppSettings.from_env()
    worker = start_embedded_worker(settings.jobs) if settings.embedded_worker else None
    _say(settings, worker, quiet)
    if settings.prepare_pool and settings.pool == "shapes" and worker is not None:
        prepare_shapes_pool(settings)
    demo = build_app(settings)
    demo.queue(default_concurrency_limit=8)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=quiet,
                **launch_options(settings))
    return demo, worker


def prepare_shapes_pool(settings: AppSettings) -> threading.Thread:
    """Build the default shapes pool in the background while the user uploads photos, so that
    the first job does not spend its first minute on it (a job that starts sooner waits for
    this build instead of starting its own: ensure_shapes_pool's lock)."""
    from ..compare.pools import ensure_shapes_pool

    def build() -> None:
        try:
            folder = ensure_shapes_pool(root=settings.jobs.data_dir)
            log.info("shapes pool ready: %s", folder)
        except Exception as exc:  # noqa: BLE001 - the first job builds it again and reports the error
            log.warning("building the shapes pool at start failed (%s); the first job will try again", exc)

    thread = threading.Thread(target=build, name="bat-shapes-pool", daemon=True)
    thread.start()
    return thread


def _say(settings: AppSettings, worker, quiet: bool) -> None:
    import torch

    device = "CUDA" if torch.cuda.is_available() else "CPU (no CUDA)"
    lines = [f"BAT Studio: backbone {settings.model!r} on {device}; pool {settings.pool or 'none'}; "
             f"data in {settings.jobs.data_dir}",
             "jobs: embedded worker in this process" if worker else
             "jobs: no embedded worker here; start `python -m bat_app worker` on a GPU machine"]
    try:
        from ..models.presets import resolve_model

        spec = resolve_model(settings.model)
        if spec.is_local and not (spec.source / "model_index.json").is_file():
            lines.append(f"warning: backbone {settings.model!r} is not at {spec.source} yet; jobs on it will fail"
                         + (" (build it: python -m bat_app shapes build)" if settings.model == "shapes" else ""))
    except BatError as exc:
        lines.append(f"warning: {exc}")
    for line in lines:
        log.warning(line) if quiet else print(line, flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m bat_app serve`` and ``python app.py``."""
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, or "
                   "GRADIO_SERVER_NAME; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--model", default=None, help="default backbone: preset, diffusers folder or hub id "
                   "(env BAT_MODEL; default sd15 with CUDA, else shapes)")
    p.add_argument("--pool", default=None, help="default backbone pool folder, 'shapes' or 'none' (env BAT_POOL)")
    p.add_argument("--no-worker", action="store_true", help="do not run jobs in this process "
                   "(run `python -m bat_app worker` elsewhere; env BAT_EMBEDDED_WORKER=0)")


def settings_from_args(args: argparse.Namespace) -> AppSettings:
    """The environment's settings with the command line's on top."""
    overrides = {}
    if args.model:
        overrides["model"] = args.model
        if not args.pool:
            overrides["pool"] = "shapes" if args.model == "shapes" else None
    if args.pool:
        overrides["pool"] = None if args.pool == "none" else args.pool
    if args.no_worker:
        overrides["embedded_worker"] = False
    return AppSettings.from_env(**overrides)


def main(argv: list[str] | None = None) -> int:
    """``python app.py``: the same as ``python -m bat_app serve``."""
    parser = argparse.ArgumentParser(prog="app.py", description="BAT Studio web app")
    add_arguments(parser)
    args = parser.parse_args(argv)
    serve(settings_from_args(args), host=args.host, port=args.port, share=args.share, block=True)
    return 0
