"""DreamBooth-LoRA training: config, data groups, cached encoding, the loop, checkpoints."""

from .config import TrainConfig
from .data import Example, ExampleGroup, examples_from_pairs
from .loop import TrainResult, train_lora
from ..progress import ProgressEvent

__all__ = ["Example", "ExampleGroup", "ProgressEvent", "TrainConfig", "TrainResult", "examples_from_pairs", "train_lora"]
