"""An offline CLIP tokenizer: SD 1.x's tokenizer rebuilt from the BPE file open_clip ships.

SD 1.x (and every model whose text encoder is OpenAI CLIP) tokenizes with the CLIP BPE that
open_clip bundles as ``bpe_simple_vocab_16e6.txt.gz``. Building a transformers
``CLIPTokenizer`` from open_clip's own vocabulary and merge ranks gives the same ids as
``openai/clip-vit-large-patch14``'s tokenizer without a download (tests check this), so a
model folder without tokenizer files still loads on an offline machine.

    >>> tok = offline_clip_tokenizer()
    >>> tok("a photo of sks dog").input_ids
    [49406, 320, 1125, 539, 48136, 1929, 49407]
"""

from __future__ import annotations

from functools import lru_cache

from transformers import CLIPTokenizer

# SD 1.x pads prompts to CLIP's full context; smaller text encoders (the shapes backbone) save
# their own shorter ``model_max_length`` with their tokenizer files.
CLIP_CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _open_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    merges = [tuple(pair) for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])]
    # open_clip names the two special tokens differently from OpenAI/transformers; the ids match.
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): idx for token, idx in simple.encoder.items()}
    return vocab, merges


def offline_clip_tokenizer(model_max_length: int = CLIP_CONTEXT_LENGTH) -> CLIPTokenizer:
    """Return SD 1.x's CLIP tokenizer built from open_clip's bundled BPE (no network)."""
    vocab, merges = _open_clip_vocab()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        model_max_length=model_max_length,
        # SD 1.x's tokenizer_config.json: pad with <|endoftext|>, lower-case, clean up spaces.
        pad_token="<|endoftext|>",
    )
