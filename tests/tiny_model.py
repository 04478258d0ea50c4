"""Moved to :mod:`bat_app.testing` (scripts use it too); kept so older test imports work."""

from bat_app.testing import TINY_RESOLUTION, build_tiny_model

__all__ = ["TINY_RESOLUTION", "build_tiny_model"]
