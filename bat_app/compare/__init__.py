"""One command that trains the baselines and ALBAT on the same subject and shows them side by side."""

from .config import BASE, CompareConfig

__all__ = ["BASE", "CompareConfig"]
