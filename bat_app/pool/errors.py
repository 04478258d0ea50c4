"""The pool's own error: a pool or a pool source is unusable, and the message says what to do."""

from bat_app.errors import BatError


class PoolError(BatError):
    """A pool cannot be built, opened or queried: the bad value and the fix are in the message.

    Raised for: a source with nothing to index, an unfinished or foreign pool folder, a pool
    queried with another embedding model than it was built with, images that are not stored.
    """
