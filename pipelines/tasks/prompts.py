"""Prompts longer than the text encoder's window (PAI models: 32 tokens), A1111's emphasis
syntax (``(词:1.2)``, ``(词)``, ``[词]``, ``BREAK``), textual-inversion embeddings and clip skip.

A prompt that fits, with no emphasis, no embedding named in it and no clip skip, is passed to
diffusers unchanged, so short prompts take exactly the diffusers code path. Otherwise the
prompt is encoded here: split into window-sized chunks (at a ``BREAK``, or after a comma near a
chunk's end), each encoded with its own start/end tokens and concatenated along the sequence
axis (the A1111 approach), the negative prompt padded with empty chunks to the same length.
Emphasis multiplies each token's output vector by its weight and restores the chunk's mean.

An embedding's name (its file name, as in A1111) standing as a word of the prompt is replaced
by its vectors: placeholder tokens hold their places, and a forward hook on the text encoder's
input embedding layer (a public PyTorch hook; the shared tokenizer and weights are never
changed) writes the vectors there. Clip skip N (A1111's ``CLIP_stop_at_last_layers``) takes the
hidden state N layers from the end, through the final layer norm.
"""

from __future__ import annotations

import re

import torch

from ..formats.prompt_weights import Piece, is_plain, parse as parse_weights

COMMA_BACKTRACK = 20  # A1111: a full 75-token chunk ends after a comma within its last 20 tokens


def token_window(pipe) -> int:
    limit = pipe.tokenizer.model_max_length
    positions = getattr(pipe.text_encoder.config, "max_position_embeddings", limit)
    return min(limit, positions)


def _chunks(tokenizer, pieces: list[Piece], size: int, vectors: dict | None = None) -> list[list]:
    """Window-sized chunks of (token id or embedding vector, weight), A1111's way: a ``BREAK``
    starts a new chunk; a full chunk ends after its last comma when that comma is near the end
    (within 20 of 75 tokens, scaled to this window), so a phrase is not cut in two."""
    back = max(1, round(COMMA_BACKTRACK * size / 75))
    commas = _comma_ids(tokenizer)
    chunks: list[list] = []
    current: list = []
    for piece in pieces:
        if piece.is_break:
            if current:
                chunks.append(current)
            current = []
            continue
        for item in _items(tokenizer, piece.text, vectors or {}):
            if len(current) == size:
                cut = max((k + 1 for k, (token, _) in enumerate(current)
                           if not isinstance(token, torch.Tensor) and token in commas), default=0)
                if cut and cut >= size - back:
                    chunks.append(current[:cut])
                    current = current[cut:]
                else:
                    chunks.append(current)
                    current = []
            current.append((item, piece.weight))
    if current or not chunks:
        chunks.append(current)
    return chunks


def _comma_ids(tokenizer) -> set:
    """The token ids of a comma (ASCII and full-width) that stand alone."""
    ids = set()
    for comma in (",", chr(0xFF0C)):  # ASCII and full-width
        found = tokenizer(comma, add_special_tokens=False).input_ids
        if len(found) == 1:
            ids.add(found[0])
    return ids


def _items(tokenizer, text: str, vectors: dict) -> list:
    pattern = _name_pattern(vectors)
    if pattern is None:
        return tokenizer(text, add_special_tokens=False).input_ids
    items: list = []
    start = 0
    for match in pattern.finditer(text):
        items += tokenizer(text[start:match.start()], add_special_tokens=False).input_ids
        items += list(vectors[match.group(1)])
        start = match.end()
    return items + tokenizer(text[start:], add_special_tokens=False).input_ids


def _name_pattern(vectors: dict):
    """Embedding names as whole words (next to Chinese text too: only ASCII word characters and
    '-' continue a name)."""
    if not vectors:
        return None
    names = "|".join(re.escape(n) for n in sorted(vectors, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9_\-])({names})(?![A-Za-z0-9_\-])")


def used_embeddings(vectors: dict, *texts: str) -> list[str]:
    pattern = _name_pattern(vectors)
    if pattern is None:
        return []
    return list(dict.fromkeys(m.group(1) for text in texts for m in pattern.finditer(text)))


def _final_norm(text_encoder):
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def _encode_chunks(pipe, chunks: list[list], window: int, device, clip_skip: int = 1) -> torch.Tensor:
    tok = pipe.tokenizer
    start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else end
    placeholder = tok.unk_token_id if tok.unk_token_id is not None else pad
    rows, spliced, weights = [], [], []
    for r, chunk in enumerate(chunks):
        ids, row_weights = [start], [1.0]
        for item, weight in chunk:
            if isinstance(item, torch.Tensor):
                spliced.append((r, len(ids), item))
                ids.append(placeholder)
            else:
                ids.append(item)
            row_weights.append(weight)
        ids.append(end)
        rows.append(ids + [pad] * (window - len(ids)))
        weights.append(row_weights + [1.0] * (window - len(row_weights)))
    input_ids = torch.tensor(rows, device=device)
    use_mask = getattr(pipe.text_encoder.config, "use_attention_mask", False)
    mask = (input_ids != pad).long() if use_mask else None

    def splice(module, inputs, output):
        output = output.clone()
        for r, position, vector in spliced:
            output[r, position] = vector.to(output.device, output.dtype)
        return output

    hook = pipe.text_encoder.get_input_embeddings().register_forward_hook(splice) if spliced else None
    try:
        with torch.no_grad():
            out = pipe.text_encoder(input_ids, attention_mask=mask, output_hidden_states=clip_skip > 1)
            if clip_skip > 1:
                layers = len(out.hidden_states) - 1
                hidden = _final_norm(pipe.text_encoder)(out.hidden_states[-min(clip_skip, layers)])
            else:
                hidden = out[0]
    finally:
        if hook is not None:
            hook.remove()
    if any(w != 1.0 for row in weights for w in row):
        hidden = _emphasised(hidden, torch.tensor(weights, dtype=hidden.dtype, device=hidden.device))
    # (chunks, window, dim) -> (1, chunks * window, dim)
    return hidden.reshape(1, -1, hidden.shape[-1]).to(pipe.unet.dtype)


def _emphasised(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each token's vector times its weight, then each chunk scaled back to its own mean (A1111's
    way: emphasis changes the balance between words, not the embedding's overall size)."""
    before = hidden.float().mean(dim=(1, 2), keepdim=True)
    scaled = hidden.float() * weights.float().unsqueeze(-1)
    after = scaled.mean(dim=(1, 2), keepdim=True)
    return (scaled * (before / after)).to(hidden.dtype)


def long_prompt_embeds(pipe, prompt: str, negative: str, device, vectors: dict | None = None,
                       clip_skip: int = 1, always: bool = False):
    """Embeddings for a prompt over the window (or ``always``: embeddings named in it, clip
    skip), or None when it fits, has no emphasis or BREAK and nothing else asks for them (use
    the plain path). Prompts are read in A1111's emphasis syntax (formats/prompt_weights.py)."""
    window = token_window(pipe)
    size = window - 2
    pos_pieces, neg_pieces = parse_weights(prompt), parse_weights(negative)
    always = always or not is_plain(pos_pieces) or not is_plain(neg_pieces)
    pos = _chunks(pipe.tokenizer, pos_pieces, size, vectors)
    neg = _chunks(pipe.tokenizer, neg_pieces, size, vectors)
    if len(pos) == 1 and len(neg) == 1 and not always:
        return None
    count = max(len(pos), len(neg))
    pos += [[]] * (count - len(pos))
    neg += [[]] * (count - len(neg))
    return (_encode_chunks(pipe, pos, window, device, clip_skip),
            _encode_chunks(pipe, neg, window, device, clip_skip), count)
