"""The exceptions BAT Studio raises on purpose, all in this one module.

Every error a user can cause derives from :class:`BatError` and carries a message that names
the problem and what to do about it, so the CLI prints it as is and the UI turns it into a
``gr.Error`` without a traceback. Anything else reaching the top is a bug.
"""


class BatError(Exception):
    """Base of every user-facing error: the message is written for the user."""


class InputError(BatError, ValueError):
    """A value the user gave (argument, config key, upload) is unusable."""


class ImageError(InputError):
    """One or more uploaded images are unusable. ``problems`` maps file name -> reason."""

    def __init__(self, message: str, problems: dict[str, str] | None = None):
        super().__init__(message)
        self.problems = dict(problems or {})


class ModelLoadError(BatError):
    """A backbone could not be loaded: which one, why, and what to do are in the message."""


class CheckpointError(BatError):
    """A training checkpoint is missing, corrupt or belongs to another configuration."""


class ExportError(BatError):
    """LoRA weights could not be written or converted."""


class HubError(ExportError):
    """The LoRA could not be pushed to the Hub; the message says why and what to do."""


class Cancelled(BatError):
    """The user cancelled the run; whatever was saved so far stays on disk."""


class LimitError(InputError):
    """A value is outside what this server accepts. ``public`` is the message for web users;
    ``str()`` adds which operator setting holds the limit (for the CLI and the server log)."""

    def __init__(self, public: str, setting: str | None = None):
        self.public = public
        self.setting = setting
        hint = f" (operator setting {setting})" if setting else ""
        super().__init__(public[:-1] + hint + "." if public.endswith(".") else public + hint)


class PoolError(BatError):
    """A pool cannot be built, opened or queried: the bad value and the fix are in the message.

    Raised for: a source with nothing to index, an unfinished or foreign pool folder, a pool
    queried with another embedding model than it was built with, images that are not stored.
    """


class QueueFull(BatError):
    """The job queue already holds its maximum number of waiting jobs."""


class ClientQueueFull(QueueFull):
    """This client already has its maximum number of jobs queued or running."""


class JobNotFound(BatError):
    """No job with this id exists in the data dir (never submitted, mistyped, or cleaned up)."""
