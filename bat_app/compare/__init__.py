"""One command that trains the baselines and ALBAT on the same subject and shows them side by side."""

from .config import BASE, CompareConfig
from .run import CompareResult, run_compare

__all__ = ["BASE", "CompareConfig", "CompareResult", "run_compare"]
