"""The training configuration: one commented dataclass that travels CLI/UI -> queue -> worker.

    >>> cfg = TrainConfig(token="sks", class_noun="dog", steps=400)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> TrainConfig.from_dict({"stpes": 10})
    Traceback (most recent call last):
    ...
    bat_app.errors.InputError: Unknown training setting 'stpes'. Known settings: ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field

from ..errors import InputError

PRECISIONS = ("auto", "no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
QUANTIZATIONS = ("nf4",)
LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear", "drop")
# caption_mix -> how many times each captioned photo comes again with the plain instance prompt.
CAPTION_PLAIN_COPIES = {"half": 1, "third": 2, "all": 0}
CAPTION_MIXES = tuple(CAPTION_PLAIN_COPIES)
# Settings that change how a training runs or what it writes, never the LoRA it makes.
RUNNING_ONLY = ("checkpoint_every", "keep_checkpoints", "save_every", "step_choices", "memory_profile", "compile")


@dataclass
class TrainConfig:
    # --- subject -------------------------------------------------------------------------
    token: str = "sks"                 # rare trigger token; "sks" is DreamBooth's classic choice
    class_noun: str = "object"         # the subject's class ("dog", "backpack", "star")
    instance_prompt: str | None = None  # default: "a photo of {token} {class_noun}"
    captions: bool = False             # use each image's same-name .txt caption instead
    # With captions, "half": each photo is trained once with its caption and once with the plain
    # instance prompt (measured on shapes: captions that name the background and position teach
    # the LoRA to follow them, and the plain half keeps the trait on the bare trigger, which
    # captions alone lost for one subject); "third": the caption in a third of the draws (each
    # photo also twice with the plain prompt); "all": the captions only.
    caption_mix: str = "half"

    # --- optimisation --------------------------------------------------------------------
    steps: int = 400                   # DreamBooth-LoRA on SD 1.5 converges in ~400-800 steps
    batch_size: int = 1                # instance images per step (each other group adds as many)
    lr: float = 1e-4                   # UNet LoRA learning rate (diffusers' DreamBooth-LoRA default)
    text_encoder_lr: float = 5e-5      # only with train_text_encoder
    lr_schedule: str = "constant"     # "drop": constant, then a tenth for the last lr_drop_fraction of steps
    lr_drop_fraction: float = 0.2
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0

    # --- LoRA ----------------------------------------------------------------------------
    rank: int = 4
    alpha: float | None = None         # scale = alpha / rank; None means alpha = rank (scale 1)
    target_modules: list[str] | None = None  # None: the model family's default (``family.lora_targets``)
    train_text_encoder: bool = False   # also a LoRA on the text encoder's attention projections
    text_encoder_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])

    # --- pivotal tuning (bat_app/train/pivotal.py) -------------------------------------------
    pivotal: bool = False              # train fresh embedding vectors for the trigger with the LoRA
    pivotal_vectors: int = 2           # vectors the trigger gets: "sks" -> tokens "sks sks_1"
    embedding_lr: float = 1e-3         # their learning rate (lora-ease and diffusers' advanced script: ~1e-3)
    # After each step the vectors' spread is pulled toward the embedding table's by this power
    # (PivotalTokens.retract; diffusers' advanced script: 0.1). 0: free, as before.
    embedding_retract: float = 0.0
    # The first this many of ``steps`` train the trigger's vectors alone; the LoRA joins after
    # (Break-A-Scene's two stages, Avrahami et al. 2023: the subject is first put into the text
    # embedding, where it composes with the prompt's other words, then the weights refine it).
    # 0: both from the first step.
    embeddings_only_steps: int = 0
    # With embeddings_only_steps: the vectors stop when the LoRA joins, so the LoRA learns what
    # they did not take on (Break-A-Scene's second stage lowers their learning rate 250-fold).
    freeze_embeddings_after: bool = False

    # --- data ----------------------------------------------------------------------------
    resolution: int | None = None      # None: the model's native resolution
    aug_weight: float = 1.0            # lambda: loss weight of augmentation (backbone) examples
    prior: bool = False                # DreamBooth prior preservation with generated class images
    prior_weight: float = 1.0          # DreamBooth's default
    num_class_images: int = 100        # class images generated (and cached) for prior preservation
    class_prompt: str | None = None    # default: "a photo of {class_noun}"
    # Phrases the class images' prompts go through in turn ("on the left", "on a red background";
    # "" is the bare class prompt): the prior then also keeps what the model does with those words,
    # which training on photos without captions would otherwise wear away. None: the bare prompt only.
    # Measured on shapes (docs/shapes.md, sixteenth session): prompt following fell 9 points, so
    # no recipe turns it on.
    prior_contexts: list[str] | None = None
    # Masked training: in a photo on a plain background (bat_app.images.subject_mask) the loss on
    # the background's latent cells is weighted this much against the subject's, so the LoRA learns
    # the subject rather than the backdrop it was photographed on (OneTrainer's "unmasked weight";
    # the weighted loss is divided by the mean weight, so the photos keep their share of the step).
    # 1: the whole photo counts, as without masks. Photos without a plain background train whole.
    background_weight: float = 1.0
    # Backdrop swaps: each photo on a plain background (bat_app.images.subject_mask.backdrop_region)
    # is also shown on this many other plain colours, so the trigger cannot stand for the backdrops
    # it was photographed on. Every photo keeps its share of the draws (one in 1 + n is the photo
    # as it is); photos with a stated context in their caption, or no plain backdrop, stay as they are.
    backdrop_swaps: int = 0
    # Latent refinement: the VAE's encoder blurs thin detail away (on shapes a 1-px outline fades
    # from 3 of 5 encoded photos on light backgrounds, though the decoder can draw it), so each
    # photo's latent mean is refined by this many Adam steps that make the *decoder* reproduce the
    # photo (decoder inversion, as in latent-space image editing), starting from the encoder's
    # mean. Only the user's photos: class and backbone images keep the encoder's latents. 0: off.
    # On shapes (100 steps) the outline was learnt at 5 of 6 seeds instead of 2, but no more cells
    # met both targets (docs/shapes.md, twenty-fifth session), so no recipe turns it on.
    refine_latents: int = 0
    # The pull toward the encoder's mean during refinement (weight of the mean squared distance
    # against the decoder's error): without it (0) the latents drift where the backbone's UNet was
    # never trained (its loss on them 2.5x the encoder's) and the LoRA loses the prompts.
    refine_anchor: float = 1.0
    # How many times a subject's pixel counts against a backdrop's in that refinement (photos on a
    # plain background; bat_app.images.subject_mask): the decoder's error is mostly the backdrop's
    # (on shapes a 1-px outline is a few dozen of 1,024 pixels), so without a weight the anchor
    # wins where the mark is. 1: every pixel alike.
    refine_subject_weight: float = 1.0
    # Tail average: the exported LoRA is the exact mean of the LoRAs at this many steps spread over
    # the last third of the training (bat_app.train.tail_average; a LoRA of rank n * rank). 1: the
    # final step's LoRA, as usual.
    tail_average: int = 1

    # --- running -------------------------------------------------------------------------
    checkpoint_every: int = 100        # 0 disables checkpoints (and resume)
    keep_checkpoints: int = 2
    # Also export the LoRA (diffusers file and trigger embeddings) every this many steps into
    # out_dir/steps/step-000200, to compare or keep an earlier step (kohya's save_every_n_steps).
    # It changes nothing in the training. 0: only the final LoRA.
    save_every: int = 0
    # Also export this many earlier steps, spread over the last third like the tail average's
    # points (300 steps, 2: steps 200 and 250), for the user to choose the one that shows the
    # subject best (the app's Results tab and `bat-app train` draw them side by side). On shapes
    # the steps of one training differ as much as training seeds do (docs/shapes.md, twenty-first
    # session). It changes nothing in the training. 0: none.
    step_choices: int = 0
    mixed_precision: str = "auto"      # auto: bf16/fp16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on CPU

    # --- memory and speed: a preset's memory profile sets these (bat_app/models/memory.py) --
    memory_profile: str | None = None  # the profile they came from; for_model: a name, or "auto" (fits this GPU)
    optimizer: str = "adamw"           # adamw8bit: bitsandbytes' 8-bit AdamW (needs it and CUDA)
    quantize: str | None = None        # nf4: the denoiser loaded 4-bit through bitsandbytes (Flux on 24 GB)
    compile: bool = False              # torch.compile the denoiser (pays back only on long runs)

    def __post_init__(self):
        self.validate()

    # ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        if not re.fullmatch(r"[\w<>\-]+", self.token or ""):
            raise InputError(f"Trigger token {self.token!r} must be one word (letters, digits, _, -), e.g. 'sks'.")
        if not (self.class_noun or "").strip():
            raise InputError("class_noun is empty: name the subject's class, e.g. 'dog' or 'backpack'.")
        positive_ints = {"steps": self.steps, "batch_size": self.batch_size, "rank": self.rank,
                         "num_class_images": self.num_class_images, "keep_checkpoints": self.keep_checkpoints,
                         "pivotal_vectors": self.pivotal_vectors, "tail_average": self.tail_average}
        for name, value in positive_ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("checkpoint_every", "save_every", "step_choices", "warmup_steps", "seed", "backdrop_swaps",
                     "refine_latents", "embeddings_only_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"`{name}` must be an integer >= 0, got {value!r}.")
        for name in ("lr", "text_encoder_lr", "embedding_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise InputError(f"`{name}` must be a number in (0, 1), got {value!r}; 1e-4 is typical.")
        if self.freeze_embeddings_after and not self.embeddings_only_steps:
            raise InputError("`freeze_embeddings_after` stops the trigger's vectors after `embeddings_only_steps`: "
                             "set those too (e.g. 100), or leave it off.")
        if self.embeddings_only_steps and not self.pivotal:
            raise InputError("`embeddings_only_steps` trains the trigger's vectors first: it needs pivotal tuning "
                             "(--pivotal, or pivotal: true), or set it to 0.")
        if not isinstance(self.embedding_retract, (int, float)) or not 0 <= self.embedding_retract <= 1:
            raise InputError(f"`embedding_retract` must be a number in [0, 1], got {self.embedding_retract!r}; "
                             f"0.1 is diffusers' advanced script's.")
        if not isinstance(self.background_weight, (int, float)) or not 0 <= self.background_weight <= 1:
            raise InputError(f"`background_weight` must be a number in [0, 1], got {self.background_weight!r}; "
                             f"1 trains the whole photo, 0.1 mostly the subject.")
        for name in ("aug_weight", "prior_weight", "max_grad_norm", "refine_anchor", "refine_subject_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"`{name}` must be a number >= 0, got {value!r}.")
        if self.alpha is not None and (not isinstance(self.alpha, (int, float)) or self.alpha <= 0):
            raise InputError(f"`alpha` must be a positive number or null, got {self.alpha!r}.")
        if self.resolution is not None and (
                not isinstance(self.resolution, int) or self.resolution < 8 or self.resolution % 8):
            raise InputError(f"`resolution` must be a multiple of 8 (e.g. 512), got {self.resolution!r}.")
        if self.mixed_precision not in PRECISIONS:
            raise InputError(f"`mixed_precision` must be one of {PRECISIONS}, got {self.mixed_precision!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"`optimizer` must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.quantize not in (None, *QUANTIZATIONS):
            raise InputError(f"`quantize` must be one of {QUANTIZATIONS} or null, got {self.quantize!r}.")
        for name in ("gradient_checkpointing", "compile"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (value is None and name == "gradient_checkpointing"):
                raise InputError(f"`{name}` must be true or false, got {value!r}.")
        if self.memory_profile is not None and not isinstance(self.memory_profile, str):
            raise InputError(f"`memory_profile` must be a profile name or null, got {self.memory_profile!r}.")
        if self.prior_contexts is not None and (
                not isinstance(self.prior_contexts, list) or not self.prior_contexts
                or not all(isinstance(c, str) for c in self.prior_contexts)):
            raise InputError(f"`prior_contexts` must be null or a non-empty list of phrases (\"\" for the "
                             f"bare class prompt), got {self.prior_contexts!r:.80}.")
        if self.caption_mix not in CAPTION_MIXES:
            raise InputError(f"`caption_mix` must be one of {CAPTION_MIXES}, got {self.caption_mix!r}.")
        if not isinstance(self.lr_drop_fraction, (int, float)) or not 0 < self.lr_drop_fraction < 1:
            raise InputError(f"`lr_drop_fraction` must be a number in (0, 1), got {self.lr_drop_fraction!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"`lr_schedule` must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}.")
        if self.target_modules is not None and not self.target_modules:
            raise InputError("`target_modules` is empty: LoRA needs at least one module, e.g. to_q.")
        if self.instance_prompt is not None and self.token not in self.instance_prompt:
            raise InputError(f"instance_prompt {self.instance_prompt!r} does not contain the token "
                             f"{self.token!r}; without it the LoRA has no trigger.")

    # ---------------------------------------------------------------------------------------
    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def prompt(self) -> str:
        """The instance prompt that triggers the subject."""
        return self.instance_prompt or f"a photo of {self.token} {self.class_noun}"

    @property
    def class_prompt_text(self) -> str:
        return self.class_prompt or f"a photo of {self.class_noun}"

    @property
    def class_prompt_cycle(self) -> list[str]:
        """The class images' prompts, taken in turn: class image i is drawn from entry i mod len."""
        base = self.class_prompt_text
        return [f"{base} {c}".strip() for c in self.prior_contexts] if self.prior_contexts else [base]

    def export_steps(self) -> list[int]:
        """The earlier steps whose LoRA is exported besides the final one: every ``save_every``
        and the ``step_choices`` points of the last third.

        >>> TrainConfig(steps=300, step_choices=2).export_steps()
        [200, 250]
        >>> TrainConfig(steps=300, save_every=100, step_choices=1).export_steps()
        [100, 200]
        """
        from .tail_average import tail_points

        every = range(self.save_every, self.steps, self.save_every) if self.save_every else []
        choices = tail_points(self.steps, self.step_choices + 1)[:-1] if self.step_choices else []
        return sorted({*every, *choices})

    def resolve_targets(self, family) -> "TrainConfig":
        """This config with ``target_modules`` filled in: the given ones, else the family's default."""
        if self.target_modules is not None:
            return self
        return dataclasses.replace(self, target_modules=list(family.lora_targets))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_model(cls, model: str | None, n_images: int | None = None, **settings) -> "TrainConfig":
        """The preset's recipe for ``n_images`` photos (``bat_app.models.recipe``), its memory profile
        ``settings["memory_profile"]`` (a name or "auto"), then ``settings`` on top (None values are
        ignored: "not given")."""
        from ..models.memory import profile_settings
        from ..models.recipe import recipe_for

        given = {k: v for k, v in settings.items() if v is not None}
        profile = profile_settings(model, given.pop("memory_profile")) if "memory_profile" in given else {}
        return cls.from_dict({**recipe_for(model).train_settings(n_images), **profile, **given})

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise InputError(f"Unknown training setting {key!r}. Known settings: {', '.join(sorted(known))}.")
        return cls(**data)

    def fingerprint(self, *ignore: str) -> str:
        """Hash of the settings that change the result (checkpoints refuse a different one)."""
        # RUNNING_ONLY settings do not change the result; settings added later hash only when
        # set, so checkpoints made before them still resume.
        later = {"optimizer": "adamw", "quantize": None, "caption_mix": "half", "prior_contexts": None,
                 "embedding_retract": 0.0, "lr_drop_fraction": 0.2, "background_weight": 1.0,
                 "backdrop_swaps": 0, "tail_average": 1, "refine_latents": 0,
                 "refine_anchor": 1.0, "refine_subject_weight": 1.0, "embeddings_only_steps": 0,
                 "freeze_embeddings_after": False}
        data = {k: v for k, v in self.to_dict().items()
                if k not in ignore and k not in RUNNING_ONLY
                and not (k in later and v == later[k])}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
