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


def text_encoders(pipe) -> list[tuple]:
    """(tokenizer, text encoder) pairs of the pipeline: one (SD 1.x/2.x) or two (SDXL)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def _special_ids(tok) -> tuple[int, int, int, int]:
    start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else end
    placeholder = tok.unk_token_id if tok.unk_token_id is not None else pad
    return start, end, pad, placeholder


def _encode_chunks(pipe, chunks: list[list], window: int, device, clip_skip: int = 1):
    """(hidden states (1, chunks × window, width), pooled embedding or None). With two encoders
    (SDXL) each reads the same tokens with its own padding, from its penultimate layer (clip skip
    N: N layers further up, as diffusers counts it), their states side by side; the pooled,
    projected embedding is the last encoder's for the first chunk (A1111's choice)."""
    pairs = text_encoders(pipe)
    two = len(pairs) > 1
    weights = [[1.0] + [weight for _, weight in chunk] for chunk in chunks]
    weights = [row + [1.0] * (window - len(row)) for row in weights]
    states, pooled, offset = [], None, 0
    for tok, encoder in pairs:
        start, end, pad, placeholder = _special_ids(tok)
        width = encoder.get_input_embeddings().weight.shape[1]
        rows, spliced = [], []
        for r, chunk in enumerate(chunks):
            ids = [start]
            for item, _ in chunk:
                if isinstance(item, torch.Tensor):
                    spliced.append((r, len(ids), item[offset:offset + width]))
                    ids.append(placeholder)
                else:
                    ids.append(item)
            ids.append(end)
            rows.append(ids + [pad] * (window - len(ids)))
        offset += width
        input_ids = torch.tensor(rows, device=device)
        use_mask = getattr(encoder.config, "use_attention_mask", False)
        mask = (input_ids != pad).long() if use_mask else None

        def splice(module, inputs, output, spliced=spliced):
            output = output.clone()
            for r, position, vector in spliced:
                output[r, position] = vector.to(output.device, output.dtype)
            return output

        hook = encoder.get_input_embeddings().register_forward_hook(splice) if spliced else None
        try:
            with torch.no_grad():
                out = encoder(input_ids, attention_mask=mask, output_hidden_states=two or clip_skip > 1)
                if two:
                    layers = len(out.hidden_states) - 1
                    hidden = out.hidden_states[-min(clip_skip + 1, layers)]
                    pooled = out[0][:1]  # the last encoder's wins: SDXL's projected OpenCLIP-G
                elif clip_skip > 1:
                    layers = len(out.hidden_states) - 1
                    hidden = _final_norm(encoder)(out.hidden_states[-min(clip_skip, layers)])
                else:
                    hidden = out[0]
        finally:
            if hook is not None:
                hook.remove()
        states.append(hidden)
    hidden = torch.cat(states, dim=-1) if two else states[0]
    if any(w != 1.0 for row in weights for w in row):
        hidden = _emphasised(hidden, torch.tensor(weights, dtype=hidden.dtype, device=hidden.device))
    # (chunks, window, dim) -> (1, chunks * window, dim)
    dtype = (pipe.unet if hasattr(pipe, "unet") else pipe.text_encoder).dtype
    return hidden.reshape(1, -1, hidden.shape[-1]).to(dtype), (pooled.to(dtype) if pooled is not None else None)


def _emphasised(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each token's vector times its weight, then each chunk scaled back to its own mean (A1111's
    way: emphasis changes the balance between words, not the embedding's overall size)."""
    before = hidden.float().mean(dim=(1, 2), keepdim=True)
    scaled = hidden.float() * weights.float().unsqueeze(-1)
    after = scaled.mean(dim=(1, 2), keepdim=True)
    return (scaled * (before / after)).to(hidden.dtype)


def encode_long(pipe, prompt: str, negative: str, device, vectors: dict | None = None,
                clip_skip: int = 1, always: bool = False) -> tuple[dict, int] | None:
    """The pipeline call's embedding arguments for a prompt over the window (or ``always``:
    embeddings named in it, clip skip) and the chunk count, or None when it fits, has no
    emphasis or BREAK and nothing else asks for them (use the plain path). Prompts are read in
    A1111's emphasis syntax (formats/prompt_weights.py). SDXL gets its pooled embeddings too."""
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
    positive, pooled = _encode_chunks(pipe, pos, window, device, clip_skip)
    negative_embeds, negative_pooled = _encode_chunks(pipe, neg, window, device, clip_skip)
    out = {"prompt_embeds": positive, "negative_prompt_embeds": negative_embeds}
    if pooled is not None:
        if not negative.strip() and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            # SDXL's own rule (diffusers, A1111): an empty negative prompt is zeros
            negative_embeds, negative_pooled = torch.zeros_like(negative_embeds), torch.zeros_like(negative_pooled)
            out["negative_prompt_embeds"] = negative_embeds
        out["pooled_prompt_embeds"], out["negative_pooled_prompt_embeds"] = pooled, negative_pooled
    return out, count


def long_prompt_embeds(pipe, prompt: str, negative: str, device, vectors: dict | None = None,
                       clip_skip: int = 1, always: bool = False):
    """``encode_long``'s positive and negative hidden states and chunk count, or None."""
    found = encode_long(pipe, prompt, negative, device, vectors, clip_skip, always)
    if found is None:
        return None
    out, count = found
    return out["prompt_embeds"], out["negative_prompt_embeds"], count
