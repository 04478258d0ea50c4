"""Pivotal-tuning embeddings on disk: one file every tool loads, named by the trigger.

The file ``<trigger>.safetensors`` holds ``emb_params`` (vectors x width), the layout kohya and
AUTOMATIC1111 write for textual-inversion embeddings; an SDXL file holds ``clip_l`` and
``clip_g`` instead (one tensor per text encoder), the SDXL layout of the same tools:

- AUTOMATIC1111 / Forge: copy it to ``embeddings/``; the file name is the trigger word.
- ComfyUI: copy it to ``models/embeddings/``; write ``embedding:<trigger>`` in the prompt.
- diffusers: ``pipe.load_textual_inversion(path, token="<trigger>")``, then prompt as usual
  (SDXL: ``state = load_file(path)``, then ``pipe.load_textual_inversion(state["clip_l"],
  token=..., text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)`` and the same with
  ``clip_g``, ``pipe.text_encoder_2``, ``pipe.tokenizer_2``).

The trigger is also stored in the file's metadata, so previews find and load it by itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

TOKEN_KEY = "bat_embedding_of"  # not "bat_trigger": the kohya LoRA file carries that one


def embeddings_file_name(token: str) -> str:
    # < > are legal in a trigger ("<s0>") but not in file names on every system.
    return f"{re.sub(r'[^A-Za-z0-9_-]', '', token) or 'trigger'}.safetensors"


def save_embeddings(out_dir: Path, token: str, vectors: dict[str, torch.Tensor]) -> Path:
    """``vectors``: {file key: tensor}, as ``PivotalTokens.vectors()`` gives them (SD's
    ``emb_params``; SDXL's ``clip_l``, ``clip_g``)."""
    path = Path(out_dir) / embeddings_file_name(token)
    state = dict(vectors)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, path,
              metadata={TOKEN_KEY: token, "vectors": str(next(iter(state.values())).shape[0])})
    return path


def find_embeddings(folder: Path | str) -> tuple[Path, str] | None:
    """(file, trigger) of the embeddings a training wrote into ``folder``, if it wrote any."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                token = (f.metadata() or {}).get(TOKEN_KEY)
        except Exception:  # not a safetensors file we can read: not ours
            continue
        if token:
            return path, token
    return None


def load_embedding_state(path: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor of an embeddings file: ``{"emb_params"}`` or SDXL's ``{"clip_l", "clip_g"}``."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}
