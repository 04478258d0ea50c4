"""The training LoRA on the shared model modules: add it, read it out, take it off.

The adapter is named ``ADAPTER`` on the denoiser and, with a text-encoder LoRA, on the text
encoders the family names (SD: the one, SDXL: both). The modules are shared with previews,
scoring and the next run of a compare, so ``remove_adapters`` leaves them as loaded.
"""

from __future__ import annotations

from peft import LoraConfig, get_peft_model_state_dict

from ..models import Components
from ..models.families.base import te_lora_prefix
from .config import TrainConfig

ADAPTER = "bat"


def add_adapters(components: Components, config: TrainConfig) -> tuple[list, list]:
    remove_adapters(components)
    unet = components.denoiser
    unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                target_modules=list(config.target_modules)), adapter_name=ADAPTER)
    te_params = []
    if config.train_text_encoder:
        for te in lora_text_encoders(components):  # SD: the one encoder; SDXL: both
            te.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                      target_modules=list(config.text_encoder_targets)), adapter_name=ADAPTER)
            te_params += [p for n, p in te.named_parameters() if "lora_" in n]
    unet_params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in unet_params + te_params:
        # Frozen weights may be bf16/fp16 on CUDA; trainable LoRA weights stay fp32.
        p.data = p.data.float()
        p.requires_grad_(True)
    if config.gradient_checkpointing or (config.gradient_checkpointing is None and components.device.type == "cuda"):
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            for te in lora_text_encoders(components):
                te.gradient_checkpointing_enable()
    return unet_params, te_params


def lora_state_dicts(components: Components, config: TrainConfig):
    unet_lora = {k: v.detach().float().cpu().clone()
                 for k, v in get_peft_model_state_dict(components.denoiser, adapter_name=ADAPTER, save_embedding_layers=False).items()}
    te_lora = {}
    if config.train_text_encoder:  # one dict; encoder i > 0's keys prefixed (SD: the encoder's own keys)
        for index in components.family.text_encoder_lora_indices:
            te = components.text_encoders[index]
            te_lora |= {te_lora_prefix(index) + k: v.detach().float().cpu().clone()
                        for k, v in get_peft_model_state_dict(te, adapter_name=ADAPTER, save_embedding_layers=False).items()}
    return unet_lora, te_lora


def remove_adapters(components: Components) -> None:
    """Take the training adapter off the shared modules (they may serve another run next)."""
    for model in (components.denoiser, *components.text_encoders):
        config = getattr(model, "peft_config", None) or {}
        if ADAPTER in config:
            model.delete_adapters(ADAPTER) if hasattr(model, "delete_adapters") else model.delete_adapter(ADAPTER)
        for p in model.parameters():
            p.requires_grad_(False)
        if hasattr(model, "disable_gradient_checkpointing") and getattr(model, "is_gradient_checkpointing", False):
            model.disable_gradient_checkpointing()
        if getattr(model, "_compiled_call_impl", None) is not None:  # nn.Module.compile(): undone too
            model._compiled_call_impl = None


def lora_text_encoders(components: Components) -> list:
    """The text encoders a text-encoder LoRA goes on (the family says which)."""
    return [components.text_encoders[i] for i in components.family.text_encoder_lora_indices]
