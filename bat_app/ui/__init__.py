"""The web app (Gradio): the only package that imports gradio, and only when a function here runs.

    python app.py                        # or: python -m bat_app serve [--host 0.0.0.0 --port 7860]
    from bat_app.ui import build_app     # the Blocks, for tests or embedding

Modules: ``settings`` (AppSettings from env vars), ``defaults`` (training defaults from the
number of images), ``handlers`` / ``views`` / ``tryit`` (what each button does: plain functions
over the library, tested without a browser), ``app`` (the Blocks and its events), ``serve``
(embedded worker + launch), ``cli`` (the ``serve`` command).
"""

from .settings import AppSettings


def build_app(settings: AppSettings | None = None):
    from .app import build_app as build

    return build(settings)


def serve(**kwargs):
    from .serve import serve as run

    return run(**kwargs)


__all__ = ["AppSettings", "build_app", "serve"]
