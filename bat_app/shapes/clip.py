"""CLIP for the Shapes world: a small open_clip model trained contrastively on the stream.

Used for the shapes pool embeddings, for CLIP-I/CLIP-T on the shapes backbone, and (SD's own
recipe) its text tower, converted to a transformers ``CLIPTextModel``, is the backbone's
frozen text encoder. Text goes through the real CLIP BPE (``offline_clip_tokenizer``) padded
with ``<|endoftext|>`` to a 32-token context, exactly as the diffusers pipeline tokenizes.

    model, preprocess, tokenizer = load_shapes_clip()
    img = model.encode_image(preprocess(pil).unsqueeze(0), normalize=True)
    txt = model.encode_text(tokenizer(["a red star on a teal background"]), normalize=True)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bat_app.shapes._train import warmup_cosine

CONTEXT_LENGTH = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
# open_clip custom config (open_clip.model.CLIP kwargs); written next to the weights.
CLIP_CONFIG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 96, "patch_size": 8,
                   "head_width": 32},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64,
                 "heads": 4, "layers": 3},
}


class ShapesTokenizer:
    """Callable like open_clip's tokenizer: list[str] -> LongTensor (n, 32), same ids as the
    backbone's diffusers tokenizer (CLIP BPE, padded with <|endoftext|>)."""

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        from bat_app.models.tokenizer import offline_clip_tokenizer

        self.context_length = context_length
        self.tok = offline_clip_tokenizer(model_max_length=context_length)

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self.tok(list(texts), padding="max_length", truncation=True,
                        max_length=context_length or self.context_length,
                        return_tensors="pt").input_ids


def create_clip(config: dict | None = None):
    from open_clip.model import CLIP

    return CLIP(**(config or CLIP_CONFIG))


def preprocess_transform(image_size: int = 32):
    from open_clip.transform import image_transform

    return image_transform(image_size, is_train=False, mean=MEAN, std=STD)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 32, 32, 3) -> normalized float (n, 3, 32, 32), as ``preprocess`` does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def train_clip(images: np.ndarray, captions: list[str], steps: int = 1200,
               batch_size: int = 256, lr: float = 1e-3, seed: int = 0, progress: bool = True,
               device: str = "cpu"):
    """Contrastive training on the stream; returns the model (CPU, eval) and the final loss."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = create_clip().to(device)
    tokenizer = ShapesTokenizer()
    tokens = tokenizer(captions).to(device)
    x_all = images_to_tensor(images).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, steps, int(steps * 0.1))
    model.train()
    bar = tqdm(range(steps), desc="clip", disable=not progress, mininterval=10)
    losses = []
    for step in bar:
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen).to(device)
        img = model.encode_image(x_all[idx], normalize=True)
        txt = model.encode_text(tokens[idx], normalize=True)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        target = torch.arange(batch_size, device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())  # read back in groups: a .item() per step stalls a GPU
        if step % 50 == 0:
            bar.set_postfix(loss=f"{torch.stack(losses[-50:]).mean().item():.3f}")
    return model.cpu().eval(), float(torch.stack(losses[-50:]).mean().item())


def vocabulary_ids(captions: list[str]) -> list[int]:
    """Token ids the Shapes world uses: those of ``captions`` and of every attribute word and
    caption phrase (markings included), plus <|startoftext|> and <|endoftext|>."""
    from bat_app.shapes.world import ATTRIBUTES, POSITION_PHRASES

    words = [w for values in ATTRIBUTES.values() for w in values] + list(POSITION_PHRASES.values())
    words += ["a photo of a picture of an", "with a dot in the middle", "with an outline",
              "on a background"]
    ids = ShapesTokenizer()(list(captions) + words)
    return sorted(set(ids.flatten().tolist()))


def save_clip(model, folder: Path, meta: dict, keep_token_ids: list[int] | None = None) -> None:
    """fp16 safetensors. With ``keep_token_ids`` only those rows of the 49,408-row token
    embedding are stored (the rest never received a gradient: the world has ~60 words);
    ``load_clip`` draws the others (``restore_token_table``). This keeps CLIP under 1 MB."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # fp16 on disk (half the size); load_shapes_clip computes in fp32.
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()
             if k != "attn_mask"}
    if keep_token_ids is not None:
        ids = torch.tensor(keep_token_ids, dtype=torch.long)
        state["token_embedding.kept_ids"] = ids
        state["token_embedding.kept_rows"] = state.pop("token_embedding.weight")[ids].contiguous()
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": CLIP_CONFIG, "preprocess_cfg": {"size": 32, "mean": MEAN, "std": STD},
         "tokenizer": "CLIP BPE (bat_app.models.tokenizer.offline_clip_tokenizer), "
                      f"context {CONTEXT_LENGTH}, padded with <|endoftext|>", **meta},
        indent=2) + "\n")


def restore_token_table(kept_ids: torch.Tensor, kept_rows: torch.Tensor, vocab_size: int,
                        seed: int = 0) -> torch.Tensor:
    """The full token table from the stored rows; every other row is drawn (seeded, so the
    same folder always gives the same table) from the kept rows' per-dimension distribution.

    Why not zeros: a zero row makes every word outside the world's ~60 (``sks``, ``<s0>``...)
    the same dead input, so "a photo of sks star" encodes like "a photo of star" (cosine
    0.991, measured) and DreamBooth can only learn a prompt-independent shift. A real CLIP's
    rare tokens are trained rows of the same scale as common ones; drawing them from the
    kept rows' mean and spread gives each id its own, ordinary-looking embedding. Rows the
    world uses are unchanged, so the UNet trained on them is unaffected.

        >>> t = restore_token_table(torch.tensor([1, 3]), torch.ones(2, 4), 6)
        >>> bool((t[[1, 3]] == 1).all()), bool((t[[0, 2, 4, 5]] != 0).all())
        (True, True)
    """
    kept_rows = kept_rows.float()
    mean, std = kept_rows.mean(0), kept_rows.std(0) if len(kept_rows) > 1 else torch.ones(
        kept_rows.shape[1])
    gen = torch.Generator().manual_seed(seed)
    table = mean + std.clamp_min(1e-3) * torch.randn((vocab_size, kept_rows.shape[1]), generator=gen)
    table[kept_ids.long()] = kept_rows
    return table


def load_clip(folder: Path):
    """(model, preprocess, tokenizer) from a folder written by ``save_clip``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    model = create_clip(cfg["model_cfg"])
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(str(folder / "open_clip_model.safetensors")).items()}
    if "token_embedding.kept_ids" in state:
        state["token_embedding.weight"] = restore_token_table(
            state.pop("token_embedding.kept_ids"), state.pop("token_embedding.kept_rows"),
            model.token_embedding.weight.shape[0])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "attn_mask"]:
        raise RuntimeError(f"Shapes CLIP weights do not match its config: missing {missing}, "
                           f"unexpected {unexpected}.")
    return (model.eval(), preprocess_transform(cfg["preprocess_cfg"]["size"]),
            ShapesTokenizer(cfg["model_cfg"]["text_cfg"]["context_length"]))


def text_tower_to_transformers(model):
    """The open_clip text tower as a transformers ``CLIPTextModel`` (same outputs).

    open_clip fuses q/k/v into ``in_proj_weight``; transformers keeps them apart. The final
    layer norm is shared; the projection is not part of ``CLIPTextModel``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    t = CLIP_CONFIG["text_cfg"]
    cfg = CLIPTextConfig(vocab_size=t["vocab_size"], hidden_size=t["width"],
                         intermediate_size=4 * t["width"], num_hidden_layers=t["layers"],
                         num_attention_heads=t["heads"], max_position_embeddings=t["context_length"],
                         hidden_act="quick_gelu", projection_dim=CLIP_CONFIG["embed_dim"],
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    src = {k: v.detach().float() for k, v in model.state_dict().items()}
    dst = {"text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
           "text_model.final_layer_norm.weight": src["ln_final.weight"],
           "text_model.final_layer_norm.bias": src["ln_final.bias"]}
    for i in range(t["layers"]):
        s, d = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for name, (w, b) in zip(("q_proj", "k_proj", "v_proj"),
                                zip(src[s + "attn.in_proj_weight"].chunk(3),
                                    src[s + "attn.in_proj_bias"].chunk(3))):
            dst[d + f"self_attn.{name}.weight"], dst[d + f"self_attn.{name}.bias"] = w, b
        pairs = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1",
                 "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
        for dn, sn in pairs.items():
            dst[d + dn + ".weight"] = src[s + sn + ".weight"]
            dst[d + dn + ".bias"] = src[s + sn + ".bias"]
    text_encoder = CLIPTextModel(cfg)
    # transformers 5 dropped the ``text_model.`` level; older versions keep it.
    if not any(k.startswith("text_model.") for k in text_encoder.state_dict()):
        dst = {k.removeprefix("text_model."): v for k, v in dst.items()}
    missing, unexpected = text_encoder.load_state_dict(dst, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise RuntimeError(f"Text tower conversion left {missing} / {unexpected}.")
    return text_encoder.eval()


def build_clip(folder: Path, images: np.ndarray, captions: list[str], seed: int,
               steps: int = 1200, batch_size: int = 256, device: str = "cpu") -> dict:
    t0 = time.time()
    model, loss = train_clip(images, captions, steps=steps, seed=seed, batch_size=batch_size,
                             device=device)
    meta = {"final_loss": round(loss, 4), "steps": steps, "seed": seed, "batch_size": batch_size,
            "device": str(device),
            "train_seconds": round(time.time() - t0, 1)}
    save_clip(model, folder, meta, keep_token_ids=vocabulary_ids(captions))
    return meta
