"""Push a finished LoRA folder to the Hugging Face Hub with the user's own token.

    url = push_lora("runs/dog/lora", "me/sks-dog-lora", token, samples=["s0.png", "s1.png"])

The token is used for this call only: it is passed to ``HfApi`` in memory, never written to
disk (no ``login()``), never logged, and scrubbed from every error message. Errors a user can
fix (offline, rejected token, bad repo name, missing files) raise :class:`HubError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import HubError
from .formats import DIFFUSERS_FILE

__all__ = ["HubError", "push_lora"]  # HubError lives in bat_app.errors with the others

log = logging.getLogger(__name__)

# What goes to the Hub from a LoRA folder (checkpoints and the live loss log stay home).
UPLOADED = (DIFFUSERS_FILE, "*_kohya.safetensors", "training_log.json", "loss_curve.png")


def push_lora(lora_dir: str | Path, repo_id: str, token: str, *, samples: Sequence[str | Path] = (),
              private: bool = True, api=None) -> str:
    """Create (or reuse) the model repo ``repo_id`` and upload the LoRA files, a model card with
    the sample images, and the samples themselves. Returns the repo's URL.

    Args:
        lora_dir: a folder written by the trainer (``pytorch_lora_weights.safetensors``,
            ``*_kohya.safetensors``, ``training_log.json``).
        repo_id: ``user/name``, or just ``name`` (the token's user is prepended).
        token: a Hugging Face token with write access; used for this call only.
        samples: images to embed in the model card (e.g. the preview samples).
        private: create the repo private (an existing repo keeps its visibility).
        api: an ``HfApi``-like object (tests); default ``HfApi(token=token)``.
    """
    lora_dir = Path(lora_dir)
    token = (token or "").strip()
    if not token:
        raise HubError("No Hugging Face token: paste a token with write access "
                       "(https://huggingface.co/settings/tokens). It is used for this upload only.")
    if not (lora_dir / DIFFUSERS_FILE).is_file():
        raise HubError(f"{lora_dir} has no {DIFFUSERS_FILE}: push a finished LoRA folder.")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with _scrubbed(token):
        user = api.whoami(token=token)
        repo_id = _full_repo_id(repo_id, user.get("name"))
        with tempfile.TemporaryDirectory(prefix="bat-hub-") as tmp:
            staging = _stage(lora_dir, Path(tmp), samples)
            api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=staging, token=token, repo_type="model",
                              commit_message="LoRA made with BAT Studio")
    log.info("pushed %s to the Hub as %s", lora_dir, repo_id)
    return f"https://huggingface.co/{repo_id}"


def _full_repo_id(repo_id: str, user: str | None) -> str:
    from huggingface_hub.utils import validate_repo_id

    repo_id = (repo_id or "").strip().strip("/")
    if not repo_id:
        raise HubError("No repository name: give one like 'my-dog-lora' or 'your-name/my-dog-lora'.")
    if "/" not in repo_id:
        if not user:
            raise HubError(f"Give the repository as 'user/{repo_id}': the token did not say whose it is.")
        repo_id = f"{user}/{repo_id}"
    try:
        validate_repo_id(repo_id)
    except Exception as exc:  # HFValidationError: its message names the rule broken
        raise HubError(f"{repo_id!r} is not a valid Hub repository name: {exc}") from None
    return repo_id


def _stage(lora_dir: Path, tmp: Path, samples: Sequence[str | Path]) -> Path:
    """The upload folder: LoRA files, samples/ and a model card that shows them."""
    from ..train.config import TrainConfig
    from .model_card import base_model_of, model_card

    staging = tmp / "repo"
    staging.mkdir()
    for pattern in UPLOADED:
        for f in lora_dir.glob(pattern):
            shutil.copyfile(f, staging / f.name)
    names = []
    for i, sample in enumerate(samples):
        sample = Path(sample)
        if sample.is_file():
            (staging / "samples").mkdir(exist_ok=True)
            names.append(f"samples/{i:02d}_{sample.name}")
            shutil.copyfile(sample, staging / names[-1])
    log_file = lora_dir / "training_log.json"
    if log_file.is_file():
        info = json.loads(log_file.read_text())
        config = TrainConfig.from_dict(info["config"])
        kohya = next((f.name for f in lora_dir.glob("*_kohya.safetensors")), "lora_kohya.safetensors")
        base = base_model_of(info.get("base_model", "unknown"), revision=info.get("base_revision"))
        if info.get("base_license"):
            base = dataclasses.replace(base, license=info["base_license"])
        card = model_card(config, base, kohya, method=info.get("method", "dreambooth-lora"), samples=names,
                          pipeline=info.get("pipeline", "StableDiffusionPipeline"))
    elif (lora_dir / "README.md").is_file():
        card = (lora_dir / "README.md").read_text() + "".join(f"\n![sample]({n})\n" for n in names)
    else:
        raise HubError(f"{lora_dir} has neither training_log.json nor README.md: push a finished LoRA folder.")
    (staging / "README.md").write_text(card)
    return staging


class _scrubbed:
    """Turn Hub and network failures into HubError, with the token removed from the message."""

    def __init__(self, token: str):
        self.token = token

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, HubError) or not isinstance(exc, Exception):
            return False
        raise HubError(self._explain(exc)) from None  # no chaining: the cause may carry headers

    def _explain(self, exc: Exception) -> str:
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        detail = str(exc).replace(self.token, "***").splitlines()[0][:300] if str(exc) else type(exc).__name__
        if isinstance(exc, OfflineModeIsEnabled):
            return ("Cannot push to the Hub: this app runs offline (HF_HUB_OFFLINE is set). Download the "
                    "LoRA files instead and upload them from a machine with internet.")
        if isinstance(exc, HfHubHTTPError):
            code = getattr(getattr(exc, "response", None), "status_code", None)
            if code == 401:
                return ("The Hub rejected the token (401): it is wrong or expired. Create a token with "
                        "'write' access at https://huggingface.co/settings/tokens and paste it again.")
            if code == 403:
                return ("The token may not write there (403): use a token with 'write' access, and a "
                        "repository under your own name or an organisation you can write to.")
            return f"The Hub refused the upload (HTTP {code}): {detail}"
        if isinstance(exc, (OSError, ConnectionError)) or type(exc).__module__.split(".")[0].startswith("httpx"):
            return (f"Cannot reach the Hugging Face Hub ({detail}). Check the internet connection and try "
                    "again, or download the files and upload them yourself.")
        return f"Push to the Hub failed: {type(exc).__name__}: {detail}"
