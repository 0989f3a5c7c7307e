"""A1111's prompt emphasis: ``(词:1.2)``, ``(词)``, ``[词]``, escapes and ``BREAK``, read the way a
pasted Civitai prompt was meant, on PAI's BERT tokenizer, combined with long-prompt chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.formats.pnginfo import parse_parameters
from pipelines.formats.prompt_weights import parse
from pipelines.requests import Txt2Img
from pipelines.tasks import prompts
from pipelines.tasks.denoise import prompt_arguments


def weights(text: str) -> list[tuple[str, float]]:
    return [("BREAK" if p.is_break else p.text, round(p.weight, 4)) for p in parse(text)]


def test_the_syntax_as_a1111_reads_it():
    assert weights("一只猫") == [("一只猫", 1.0)]
    assert weights("(猫:1.3)，狗") == [("猫", 1.3), ("，狗", 1.0)]
    assert weights("((红色)) [蓝色]") == [("红色", 1.21), (" ", 1.0), ("蓝色", 0.9091)]
    assert weights(r"a \(b\) \[c\] \\") == [("a (b) [c] \\", 1.0)]
    assert weights("(a [b] c:1.5) d") == [("a ", 1.5), ("b", 1.3636), (" c", 1.5), (" d", 1.0)]
    assert weights("(没关上") == [("没关上", 1.1)]  # left open: applies to the end
    assert weights("多余的)") == [("多余的)", 1.0)]  # nothing to close: text
    assert weights("(y:abc) z") == [("y:abc", 1.1), (" z", 1.0)]  # not a number: text
    assert weights("山水 BREAK 小船") == [("山水", 1.0), ("BREAK", 1.0), ("小船", 1.0)]
    assert weights("BREAKFAST") == [("BREAKFAST", 1.0)]
    # A Chinese input method's full-width colon is read as the colon (an extension of ours);
    # full-width brackets are prose, as in A1111.
    assert weights("(山水：0.8)") == [("山水", 0.8)]
    assert weights("海报（红色）") == [("海报（红色）", 1.0)]
    # A quoted title (Z-Image writes it into the picture) keeps its quotes.
    assert weights("海报，标题“丹青”") == [("海报，标题“丹青”", 1.0)]


def a1111_reference(pipe, pieces: list[tuple[str, float]]) -> torch.Tensor:
    """A1111's emphasis computed by hand on one chunk: the text's tokens with their weights,
    encoded, each output vector times its weight, the chunk scaled back to its mean."""
    tok = pipe.tokenizer
    ids, ws = [tok.cls_token_id], [1.0]
    for text, weight in pieces:
        part = tok(text, add_special_tokens=False).input_ids
        ids += part
        ws += [weight] * len(part)
    ids.append(tok.sep_token_id)
    ws.append(1.0)
    window = prompts.token_window(pipe)
    ids += [tok.pad_token_id] * (window - len(ids))
    ws += [1.0] * (window - len(ws))
    with torch.no_grad():
        z = pipe.text_encoder(torch.tensor([ids]))[0]
    mean = z.mean()
    z = z * torch.tensor(ws).reshape(1, -1, 1)
    return z * (mean / z.mean())


def test_emphasis_is_a1111s_mean_restoring_multiply(store):
    pipe = store.base()
    got = prompts.long_prompt_embeds(pipe, "(猫:1.3)，狗 [草地]", "", "cpu")
    assert got is not None
    positive, negative, chunks = got
    want = a1111_reference(pipe, [("猫", 1.3), ("，狗 ", 1.0), ("草地", 1 / 1.1)])
    assert chunks == 1
    assert torch.allclose(positive, want, atol=1e-5)
    # Weights of 1 everywhere (an escaped bracket) take the plain path with the text unescaped.
    assert prompts.long_prompt_embeds(pipe, r"猫 \(大\)", "", "cpu") is None
    args = prompt_arguments(pipe, r"猫 \(大\)", "", {}, store)
    assert args["prompt"] == "猫 (大)"


def test_break_starts_a_chunk_and_long_prompts_break_after_a_comma(store):
    pipe = store.base()
    _, _, chunks = prompts.long_prompt_embeds(pipe, "山水 BREAK 小船", "", "cpu")
    assert chunks == 2
    size = prompts.token_window(pipe) - 2
    # 26 characters, a comma, then 10 more: the first chunk ends after the comma (within the
    # backtrack of the chunk's end), so "大熊猫…" is not cut in two.
    text = "山" * 26 + "，" + "大熊猫在竹林里吃竹子啊"
    items = prompts._chunks(pipe.tokenizer, parse(text), size)
    assert [len(c) for c in items] == [27, 11]
    # Without a comma near the end: cut at the window.
    items = prompts._chunks(pipe.tokenizer, parse("山" * 40), size)
    assert [len(c) for c in items] == [size, 40 - size]


def test_emphasis_changes_the_picture_and_the_infotext_keeps_the_text(studio):
    base = dict(negative_prompt="[模糊]", width=64, height=64, num_inference_steps=2, seed=7, sampler="Euler")
    paths, _ = studio.txt2img(Txt2Img.from_fields(prompt="(竹林:1.6) 里的熊猫", **base))
    plain, _ = studio.txt2img(Txt2Img.from_fields(prompt="竹林 里的熊猫", negative_prompt="模糊",
                                                  **{k: v for k, v in base.items() if k != "negative_prompt"}))
    with Image.open(paths[0]) as weighted, Image.open(plain[0]) as unweighted:
        assert np.abs(np.asarray(weighted, int) - np.asarray(unweighted, int)).max() > 0
        parsed = parse_parameters(weighted.info["parameters"])
    assert parsed["prompt"] == "(竹林:1.6) 里的熊猫" and parsed["negative_prompt"] == "[模糊]"


@pytest.mark.parametrize("text", ["(猫:1.2)，" * 40, "猫 BREAK " * 5])
def test_weighted_long_prompts_run(studio, text):
    paths, info = studio.txt2img(Txt2Img.from_fields(prompt=text, width=64, height=64, num_inference_steps=1, seed=1))
    assert paths and info["notices"].get("prompt_chunks", 1) >= 2
