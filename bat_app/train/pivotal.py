"""Pivotal tuning: new token embeddings for the trigger, trained together with the LoRA.

Why: a DreamBooth trigger is only useful if its text embedding differs from the class prompt's.
A rare token whose row is dead or near-identical to the rest leaves the UNet nothing to key on,
so the LoRA learns a prompt-independent shift (measured on the shapes backbone). Pivotal tuning,
as in diffusers' ``train_dreambooth_lora_sd15_advanced.py`` and the lora-ease Space, gives the
trigger ``vectors`` fresh embedding rows and trains them with the LoRA.

The tokens follow diffusers' multi-vector textual-inversion convention: trigger ``sks`` with 2
vectors becomes the tokens ``sks sks_1``, and ``pipe.load_textual_inversion(file, token="sks")``
expands ``sks`` in any prompt the same way. So prompts keep the plain trigger everywhere
(training, previews, "Try it", diffusers, AUTOMATIC1111, ComfyUI).

    pivotal = PivotalTokens(components, "sks", vectors=2, seed=0)
    pivotal.expand("a photo of sks dog")   # 'a photo of sks sks_1 dog'
    ...train, with pivotal.param in the optimizer...
    vectors = pivotal.vectors_tensor(); pivotal.remove()
"""

from __future__ import annotations

import torch

from ..models import Components, build_pipeline


def initial_vectors(components: Components, vectors: int, seed: int) -> torch.Tensor:
    """Rows drawn from the embedding table's own per-dimension mean and spread: the new
    token starts as an ordinary, unremarkable word (diffusers' advanced script draws with the
    table's std), not as zeros and not as the class word (which the class prompt already has)."""
    table = components.text_encoder.get_input_embeddings().weight.detach().float().cpu()
    gen = torch.Generator().manual_seed(seed)
    return table.mean(0) + table.std(0) * torch.randn((vectors, table.shape[1]), generator=gen)


class PivotalTokens:
    """Attach ``vectors`` trainable embedding rows for ``token`` to the shared text encoder.

    The rows live in ``self.param`` (fp32, trainable); a forward hook on the token-embedding
    module puts them in place of the table's rows, so the frozen table is never written and
    ``remove()`` leaves tokenizer and text encoder exactly as they were.
    """

    def __init__(self, components: Components, token: str, vectors: int = 2, seed: int = 0,
                 init: torch.Tensor | None = None):
        self.components = components
        self.token = token
        self.pipe = build_pipeline(components)
        start = initial_vectors(components, vectors, seed) if init is None else init.float().cpu()
        embedding = components.text_encoder.get_input_embeddings()
        self.pipe.load_textual_inversion(start.to(embedding.weight.dtype), token=token,
                                         text_encoder=components.text_encoder,
                                         tokenizer=components.tokenizer)
        self.names = [token] + [f"{token}_{i}" for i in range(1, vectors)]
        self.ids = torch.tensor(components.tokenizer.convert_tokens_to_ids(self.names))
        device = components.text_encoder.device
        self.param = torch.nn.Parameter(start.to(device))
        self._hook = components.text_encoder.get_input_embeddings().register_forward_hook(self._substitute)

    def _substitute(self, module, args, output):
        ids = args[0]
        hit = (ids.unsqueeze(-1) == self.ids.to(ids.device)).to(output.dtype)  # (b, l, vectors)
        keep = 1 - hit.sum(-1, keepdim=True)
        return output * keep + hit @ self.param.to(output.dtype)

    def expand(self, prompt: str) -> str:
        """The prompt as the text encoder sees it: ``sks`` -> ``sks sks_1`` (diffusers' rule)."""
        return self.pipe.maybe_convert_prompt(prompt, self.components.tokenizer)

    def vectors_tensor(self) -> torch.Tensor:
        return self.param.detach().float().cpu().clone()

    def load_vectors(self, vectors: torch.Tensor) -> None:
        with torch.no_grad():
            self.param.copy_(vectors.to(self.param.device, self.param.dtype))

    def remove(self) -> None:
        self._hook.remove()
        self.pipe.unload_textual_inversion(tokens=self.names, tokenizer=self.components.tokenizer,
                                           text_encoder=self.components.text_encoder)
