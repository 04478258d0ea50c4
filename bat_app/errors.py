"""The exceptions BAT Studio raises on purpose.

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
