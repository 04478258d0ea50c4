"""What every tab's events share: library errors shown as messages, and the cancel handler."""

from __future__ import annotations

import functools

import gradio as gr

from ...errors import BatError
from .. import handlers, views
from ..public import public_message
from ..settings import AppSettings


def guarded(fn):
    """Show library errors as gr.Error (message only: no traceback, no server path, no operator
    setting); anything else is a bug, which Gradio shows as a bare "Error" (the log has it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BatError as exc:
            raise gr.Error(public_message(exc), print_exception=False) from exc
    return wrapper


def cancel_handler(settings: AppSettings):
    """The Cancel buttons' handler (the Progress tab's and the Jobs tab's): the job's new status."""
    @guarded
    def on_cancel(job):
        status = handlers.cancel_job(settings, job)
        return views.progress_text(status)
    return on_cancel
