"""Adapter over the Qwen3 text-embedding model (`Qwen3-Embedding-0.6B/`) through transformers.

* Captions: each prompt tokenized on its own (truncated at 256 tokens), right-padded to the
  longest with the pad id, run through the full model with input ids only (no attention mask:
  attention is causal, so right padding does not reach the real tokens) -> `last_hidden_state`
  (final RMSNorm applied) and a bool mask.
* Lyrics: same tokenisation (truncated at 2048), but only the input embedding table, no
  transformer; the DiT's lyric encoder does the contextualising.

Tokenizer facts the code relies on, not re-implements: the folder's fast tokenizer appends
`<|endoftext|>` to every string and truncation keeps that appended token (a 256-token caption is
255 prompt ids + EOS); special-token strings in the prompt text are parsed as special tokens
(`split_special_tokens=False` is passed explicitly). The pad id is the tokenizer's pad token
(151643 `<|endoftext|>` in the real folder), falling back to `TEXT_PAD_ID` only when the
tokenizer defines none. Loading never uses `trust_remote_code`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from songstep.constants import CAPTION_MAX_TOKENS, LYRICS_MAX_TOKENS, TEXT_PAD_ID
from songstep.errors import CheckpointError, InvalidRequest, ModelNotFound
from songstep.models.folders import check_finite, check_loading_info, component_folder

logger = logging.getLogger(__name__)


class TextEncoder:
    """Qwen3 embedding model + tokenizer: captions through the network, lyrics through the
    embedding table. Wraps in-memory transformers objects (`.model`, `.tokenizer`)."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else TEXT_PAD_ID
        rows = model.get_input_embeddings().num_embeddings
        if not 0 <= self.pad_id < rows:
            raise CheckpointError(f"text pad id {self.pad_id} is outside the embedding table ({rows} rows)")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tokenizer_path: str | Path | None = None,
    ) -> TextEncoder:
        """Load model (`AutoModel`, no LM head) and tokenizer (`AutoTokenizer`) from one folder (the
        official `Qwen3-Embedding-0.6B/`), or the tokenizer from `tokenizer_path` (the diffusers
        layout's `text_encoder/` + `tokenizer/`)."""
        from transformers import AutoModel, AutoTokenizer

        tok_path = Path(tokenizer_path or path)
        if tokenizer_path is not None and not any(
                (tok_path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise ModelNotFound(f"no text tokenizer at {tok_path} (tokenizer.json missing)")
        with component_folder(path, "text encoder") as path:
            tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=False, local_files_only=True)
            model, info = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=False, local_files_only=True,
                                                    use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True)
        check_loading_info(info, path, "text encoder")
        check_finite(model.state_dict().items(), f"text encoder at {path}")
        logger.info("loaded text encoder from %s (%s, %s)", path, device, dtype)
        return cls(model.to(device=device, dtype=dtype), tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    def token_ids(self, text: str, max_length: int) -> list[int]:
        """One prompt's ids as the pipeline sees them (post-processor EOS kept on truncation)."""
        encoded = self.tokenizer(text, truncation=True, max_length=max_length, split_special_tokens=False)
        ids = list(encoded["input_ids"])
        if len(ids) == max_length:  # maybe cut: say so, with the numbers (the model reads only these)
            full = len(self.tokenizer(text, split_special_tokens=False)["input_ids"])
            if full > max_length:
                logger.warning("a text prompt of %d tokens is cut to the model's %d-token limit (%d tokens dropped)",
                               full, max_length, full - max_length)
        return ids

    def tokenize(self, prompts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt tokenized alone, right-padded with `pad_id` to the longest.

        Returns ids [B, L] int64 and mask [B, L] bool on the model device (L >= 1).
        """
        _check_prompts(prompts)
        if max_length < 1:
            raise InvalidRequest(f"max_length must be >= 1, got {max_length}")
        rows = [self.token_ids(text, max_length) for text in prompts]
        length = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids.to(self.device), mask.to(self.device)

    def encode_captions(
        self, prompts: Sequence[str], max_length: int = CAPTION_MAX_TOKENS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption prompts -> (last_hidden_state [B, L, H] in the model dtype, mask [B, L] bool)."""
        ids, mask = self.tokenize(prompts, max_length)
        with torch.no_grad():
            hidden = self.model(input_ids=ids, use_cache=False).last_hidden_state
        return hidden, mask

    def embed_lyrics(
        self, prompts: Sequence[str], max_length: int = LYRICS_MAX_TOKENS
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lyric prompts -> (token embeddings [B, L, H], mask [B, L] bool); no transformer."""
        ids, mask = self.tokenize(prompts, max_length)
        with torch.no_grad():
            embeddings = self.model.get_input_embeddings()(ids)
        return embeddings, mask


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise InvalidRequest("prompts must be a non-empty list of strings")
    for text in prompts:
        if not isinstance(text, str):
            raise InvalidRequest(f"prompts must be strings, got {type(text).__name__}")


__all__ = ["TextEncoder"]
