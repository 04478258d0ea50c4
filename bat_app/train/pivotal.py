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

A family with several CLIP encoders gets vectors in each one it names
(``family.pivotal_embedding_keys``): SDXL trains ``clip_l`` (``text_encoder``) and ``clip_g``
(``text_encoder_2``) together, the layout SDXL embeddings have in A1111, ComfyUI and diffusers.

    pivotal = PivotalTokens(components, "sks", vectors=2, seed=0)
    pivotal.expand("a photo of sks dog")   # 'a photo of sks sks_1 dog'
    ...train, with pivotal.params in the optimizer...
    vectors = pivotal.vectors(); pivotal.remove()   # SD: {"emb_params"}; SDXL: {"clip_l", "clip_g"}
"""

from __future__ import annotations

import torch

from ..models import Components, build_pipeline

CHECKPOINT_KEY = "pivotal.vectors"  # the trigger's trained vectors, inside a checkpoint's LoRA file


def initial_vectors(components: Components, vectors: int, seed: int, encoder: int = 0) -> torch.Tensor:
    """Rows drawn from the embedding table's own per-dimension mean and spread: the new
    token starts as an ordinary, unremarkable word (diffusers' advanced script draws with the
    table's std), not as zeros and not as the class word (which the class prompt already has).
    ``encoder``: which text encoder's table (each further encoder draws with seed + its index)."""
    table = components.text_encoders[encoder].get_input_embeddings().weight.detach().float().cpu()
    gen = torch.Generator().manual_seed(seed + encoder)
    return table.mean(0) + table.std(0) * torch.randn((vectors, table.shape[1]), generator=gen)


class PivotalTokens:
    """Attach ``vectors`` trainable embedding rows for ``token`` to each text encoder the
    family names (``family.pivotal_embedding_keys``; SD: the one CLIP encoder).

    The rows live in ``self.params`` (one fp32 trainable tensor per encoder, in the order of
    ``self.keys``, the embeddings file's keys); a forward hook on each token-embedding module puts
    them in place of the table's rows, so the frozen tables are never written and ``remove()``
    leaves tokenizers and text encoders exactly as they were.
    """

    def __init__(self, components: Components, token: str, vectors: int = 2, seed: int = 0,
                 init: dict[str, torch.Tensor] | None = None):
        self.components = components
        self.token = token
        self.pipe = build_pipeline(components)
        self.encoders = [i for i, _ in components.family.pivotal_embedding_keys]
        self.keys = [key for _, key in components.family.pivotal_embedding_keys]
        self.names = [token] + [f"{token}_{i}" for i in range(1, vectors)]
        self.params: list[torch.nn.Parameter] = []
        self._table_std: list[float] | None = None  # each table's spread, what retract() pulls toward
        self._ids: list[torch.Tensor] = []
        self._hooks = []
        for index, key in zip(self.encoders, self.keys):
            te, tok = components.text_encoders[index], components.tokenizers[index]
            start = init[key].float().cpu() if init and key in init else initial_vectors(components, vectors, seed, index)
            embedding = te.get_input_embeddings()
            self.pipe.load_textual_inversion(start.to(embedding.weight.dtype), token=token, text_encoder=te,
                                             tokenizer=tok)
            param = torch.nn.Parameter(start.to(te.device))
            ids = torch.tensor(tok.convert_tokens_to_ids(self.names))
            self.params.append(param)
            self._ids.append(ids)
            self._hooks.append(te.get_input_embeddings().register_forward_hook(self._substitute(param, ids)))

    @staticmethod
    def _substitute(param: torch.nn.Parameter, token_ids: torch.Tensor):
        def hook(module, args, output):
            ids = args[0]
            hit = (ids.unsqueeze(-1) == token_ids.to(ids.device)).to(output.dtype)  # (b, l, vectors)
            keep = 1 - hit.sum(-1, keepdim=True)
            return output * keep + hit @ param.to(output.dtype)

        return hook

    @torch.no_grad()
    def retract(self, power: float) -> None:
        """Pull each encoder's vectors' spread toward its table's: scale by (table std / vectors'
        std) ** ``power``, after each optimizer step. Without it the vectors grow to ~5x an
        ordinary word's norm on the shapes backbone (measured), and a trigger that loud drowns
        the words around it ("on the left"). diffusers' advanced DreamBooth script does the same
        with power 0.1."""
        if power <= 0:
            return
        if self._table_std is None:  # measured once, and only when asked: a float copy of each table
            self._table_std = [float(self.components.text_encoders[i].get_input_embeddings().weight.float().std())
                               for i in self.encoders]
        for param, table_std in zip(self.params, self._table_std):
            param.mul_((table_std / float(param.float().std().clamp_min(1e-12))) ** power)

    def expand(self, prompt: str) -> str:
        """The prompt as the text encoder sees it: ``sks`` -> ``sks sks_1`` (diffusers' rule)."""
        return self.pipe.maybe_convert_prompt(prompt, self.components.tokenizer)

    def vectors(self) -> dict[str, torch.Tensor]:
        """Embeddings-file key -> (vectors, width), fp32 on the CPU: what ``<trigger>.safetensors``
        holds (SD: ``emb_params``; SDXL: ``clip_l``, ``clip_g``)."""
        return {key: p.detach().float().cpu().clone() for key, p in zip(self.keys, self.params)}

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """The vectors under their checkpoint keys: the first encoder's under CHECKPOINT_KEY (SD's
        checkpoints as before), any further encoder's under ``CHECKPOINT_KEY.<file key>``."""
        vectors = self.vectors()
        return {self._checkpoint_key(i): vectors[key] for i, key in enumerate(self.keys)}

    def load_checkpoint_state(self, lora: dict[str, torch.Tensor]) -> None:
        """Load the vectors :meth:`checkpoint_state` wrote, taking them out of ``lora``."""
        self.load_vectors({key: lora.pop(self._checkpoint_key(i)) for i, key in enumerate(self.keys)})

    def _checkpoint_key(self, index: int) -> str:
        return CHECKPOINT_KEY if index == 0 else f"{CHECKPOINT_KEY}.{self.keys[index]}"

    def load_vectors(self, vectors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, param in zip(self.keys, self.params):
                param.copy_(vectors[key].to(param.device, param.dtype))

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for index in self.encoders:
            self.pipe.unload_textual_inversion(tokens=self.names, tokenizer=self.components.tokenizers[index],
                                               text_encoder=self.components.text_encoders[index])
