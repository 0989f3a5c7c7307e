"""Prompts longer than the text encoder's window (PAI models: 32 tokens).

A prompt that fits is passed to diffusers unchanged, so short prompts take exactly the
diffusers code path. A longer one is split into window-sized chunks, each encoded with its
own start/end tokens, and the embeddings are concatenated along the sequence axis (the A1111
approach); the negative prompt is padded with empty chunks to the same length.
"""

from __future__ import annotations

import torch


def token_window(pipe) -> int:
    limit = pipe.tokenizer.model_max_length
    positions = getattr(pipe.text_encoder.config, "max_position_embeddings", limit)
    return min(limit, positions)


def _chunks(tokenizer, text: str, size: int) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]


def _encode_chunks(pipe, chunks: list[list[int]], window: int, device) -> torch.Tensor:
    tok = pipe.tokenizer
    start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else end
    rows = []
    for chunk in chunks:
        ids = [start, *chunk, end]
        rows.append(ids + [pad] * (window - len(ids)))
    input_ids = torch.tensor(rows, device=device)
    use_mask = getattr(pipe.text_encoder.config, "use_attention_mask", False)
    mask = (input_ids != pad).long() if use_mask else None
    with torch.no_grad():
        hidden = pipe.text_encoder(input_ids, attention_mask=mask)[0]
    # (chunks, window, dim) -> (1, chunks * window, dim)
    return hidden.reshape(1, -1, hidden.shape[-1]).to(pipe.unet.dtype)


def long_prompt_embeds(pipe, prompt: str, negative: str, device):
    """Embeddings for a prompt over the window, or None when it fits (use the plain path)."""
    window = token_window(pipe)
    size = window - 2
    pos = _chunks(pipe.tokenizer, prompt, size)
    neg = _chunks(pipe.tokenizer, negative, size)
    if len(pos) == 1 and len(neg) == 1:
        return None
    count = max(len(pos), len(neg))
    pos += [[]] * (count - len(pos))
    neg += [[]] * (count - len(neg))
    return _encode_chunks(pipe, pos, window, device), _encode_chunks(pipe, neg, window, device), count
