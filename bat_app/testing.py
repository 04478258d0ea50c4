"""Tiny models, photos and pools built from configs in seconds: what the tests and the
scripts' ``--quick`` modes run on (no download, CPU).

    from bat_app.testing import build_tiny_model, make_subject_images
    model_dir = build_tiny_model(Path("/tmp/tiny-sd"))          # a diffusers SD folder, 32 px
    photos = make_subject_images(Path("/tmp/subject"), n=3)     # a red disc on 3 backgrounds

The model recipe is diffusers' ``get_dummy_components()``: a 2-block UNet, a 1-block VAE and a
2-layer CLIPTextModel, seeded, saved as a normal diffusers folder so that it loads through the
very code that loads a real model. Heavy imports happen inside the functions, so importing this
module costs nothing.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

TINY_RESOLUTION = 32

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_model(folder: Path, prediction_type: str = "epsilon", with_tokenizer: bool = True) -> Path:
    """A randomly initialised SD-architecture model (seed 0) saved as a diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bat_app.models.tokenizer import offline_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=TINY_RESOLUTION // 2,
        in_channels=4, out_channels=4, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, sample_size=TINY_RESOLUTION,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=16,
        intermediate_size=32, layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=49408, max_position_embeddings=16, projection_dim=16,
    ))
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=offline_clip_tokenizer(model_max_length=16),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    if not with_tokenizer:
        shutil.rmtree(folder / "tokenizer")
    return folder


def make_subject_images(folder: Path, n: int = 3, size: int = 64, seed: int = 0) -> Path:
    """n distinct synthetic photos of one 'subject': a red disc on varied backgrounds.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     sorted(p.name for p in make_subject_images(Path(tmp), n=2).iterdir())
    ['img0.png', 'img1.png']
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        bg = rng.integers(0, 255, 3)
        img = np.ones((size, size, 3), np.uint8) * bg.astype(np.uint8)
        cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (size // 4) ** 2
        img[disc] = (220, 30, 30)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def make_tiny_clip_dir(folder: Path) -> Path:
    """A random open_clip CLIP (embed 32, 32 px) saved in open_clip's local folder format, so it
    loads through ``load_embedder(folder)`` like any user-supplied model."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def make_pool_source(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """n captioned 48 px images: discs and squares in a few colours (folder-pool layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 220, 40)}
    yy, xx = np.mgrid[:48, :48]
    for i in range(n):
        name = list(colours)[i % 4]
        shape = "disc" if (i // 4) % 2 == 0 else "square"
        img = np.full((48, 48, 3), rng.integers(0, 255, 3), np.uint8)
        cx, cy = rng.integers(16, 32, 2)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < 144) if shape == "disc" else ((abs(xx - cx) < 11) & (abs(yy - cy) < 11))
        img[mask] = colours[name]
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a {name} {shape}")
    return folder


def build_tiny_pool(root: Path, embedder=None) -> Path:
    """``root/pool``: a 40-item folder pool indexed with the tiny CLIP (built in ``root/clip``
    unless an embedder is given)."""
    from bat_app.pool import build_pool, load_embedder

    if embedder is None:
        embedder = load_embedder(str(make_tiny_clip_dir(root / "clip")), None, device="cpu")
    build_pool(make_pool_source(root / "source"), root / "pool", embedder, batch_size=16)
    return root / "pool"


def module_imports(module: str) -> set[str]:
    """Every ``bat_app`` module that ``module``'s source imports, at any depth in the file
    (function-level imports count: they are a dependency all the same).

    >>> "bat_app.errors" in module_imports("bat_app.images.decode")
    True
    """
    root = Path(__file__).resolve().parent.parent
    path = root / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("bat_app")}


def share_shapes_pool(pool_dir: Path, home: Path) -> Path:
    """Make an already built shapes pool the one ``pool: "shapes"`` finds under the data dir
    ``home`` (a symlink, so many tests share one rendering); returns the link."""
    link = Path(home) / "pools" / Path(pool_dir).name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(Path(pool_dir).resolve(), target_is_directory=True)
    return link


TINY_FLUX_WORDS = "a photo of sks dog disc red blue green yellow square star object the in on".split()


def tiny_t5_tokenizer(model_max_length: int = 32):
    """A T5 (Unigram) tokenizer over a few words and the letters, built in code (no download, no
    sentencepiece): pad 0, eos 1, unk 2 as in T5's own."""
    from transformers import T5TokenizerFast

    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
             + [("\u2581" + w, -1.0) for w in TINY_FLUX_WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"])
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def build_tiny_flux(folder: Path, guidance_embeds: bool = True) -> Path:
    """A randomly initialised Flux-architecture model (seed 0) saved as a diffusers FluxPipeline
    folder: one double and one single block, a 2-block VAE (4 latent channels, 16 packed), tiny
    CLIP and T5 encoders and the T5 tokenizer above. 32 px images are 16x16 latents, 64 tokens."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from bat_app.models.tokenizer import offline_clip_tokenizer

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4, sample_size=TINY_RESOLUTION, shift_factor=0.0609, scaling_factor=1.5035,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=49408, max_position_embeddings=16, projection_dim=32,
    ))
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=offline_clip_tokenizer(model_max_length=16), text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sdxl(folder: Path) -> Path:
    """A randomly initialised SDXL-architecture model (seed 0) saved as a diffusers
    StableDiffusionXLPipeline folder: a 2-block UNet with ``text_time`` micro-conditioning, a
    2-block VAE (32 px images are 16x16 latents), a CLIPTextModel (width 16) and a
    CLIPTextModelWithProjection (width 24, projection 16) with offline CLIP tokenizers, and
    SDXL base's Euler scheduler config."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bat_app.models.tokenizer import offline_clip_tokenizer

    def clip_config(width: int, projection: int) -> CLIPTextConfig:
        return CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=width,
                              intermediate_size=32, layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2,
                              vocab_size=49408, max_position_embeddings=16, projection_dim=projection)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=TINY_RESOLUTION // 2,
        in_channels=4, out_channels=4, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16 + 24, attention_head_dim=2, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4, sample_size=TINY_RESOLUTION, scaling_factor=0.13025,
    )
    text_encoder = CLIPTextModel(clip_config(16, 16))
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(24, 16))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
    )
    tokenizer = offline_clip_tokenizer(model_max_length=16)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=offline_clip_tokenizer(model_max_length=16), unet=unet, scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
