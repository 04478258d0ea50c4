"""Errors a user of the job queue can cause (the UI shows their message as is)."""

from bat_app.errors import BatError


class QueueFull(BatError):
    """The queue already holds its maximum number of waiting jobs."""


class JobNotFound(BatError):
    """No job with this id exists in the data dir (never submitted, mistyped, or cleaned up)."""
