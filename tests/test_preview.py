"""Live step previews (pipelines/preview.py): the linear approximation, the tiny decoder from
models/vae-approx, the rate limit, and that previews never change the final image."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines.tasks import txt2img
from pipelines.store.folders import ModelFolders
from pipelines.requests import Txt2Img
from pipelines.tasks.preview import SD1_LATENT_RGB, Previewer, approx_decode, preview_decoder
from pipelines.store import ModelStore

SMALL = dict(prompt="竹林", width=64, height=72, num_inference_steps=4, seed=3)


def test_approx_decode_maps_each_latent_channel_to_its_colour():
    for channel in range(4):
        latents = torch.zeros(2, 4, 3, 5)
        latents[0, channel] = 1.0
        image = approx_decode(latents)
        assert image.size == (40, 24)  # 8x the latent grid
        expected = np.clip((1 + SD1_LATENT_RGB[channel].numpy()) * 127.5, 0, 255)
        assert np.abs(np.asarray(image)[12, 20].astype(float) - expected).max() <= 1


def test_approx_decode_refuses_latents_it_does_not_know():
    with pytest.raises(ValueError):
        approx_decode(torch.zeros(1, 16, 8, 8))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_previewer_is_rate_limited_and_skips_the_last_step():
    clock, shown = FakeClock(), []
    previewer = Previewer(lambda latents: "image", lambda image, step, total: shown.append(step), 1.0, clock)
    latents = torch.zeros(1, 4, 2, 2)
    for step in range(1, 11):
        clock.now += 0.4
        previewer(step, 10, latents)
    # 0.4 s per step, one preview per second at most: steps 3, 6, 9 (never step 10 = the last).
    assert shown == [3, 6, 9]


def test_a_failing_preview_stops_previews_but_not_the_job():
    clock, shown = FakeClock(), []

    def broken(latents):
        raise RuntimeError("decoder exploded")

    previewer = Previewer(broken, lambda *a: shown.append(a), 0.0, clock)
    for step in range(1, 5):
        previewer(step, 5, torch.zeros(1, 4, 2, 2))  # raises nothing
    assert previewer.failed and shown == []


def preview_store(store, tmp_path, method="auto"):
    """The session store's models, its own settings (a preview every step) and vae-approx folder."""
    approx = tmp_path / "vae-approx"

    class Folders(ModelFolders):
        def folder(self, kind):
            return approx if kind == "vae_approx" else super().folder(kind)

    settings = replace(store.settings, preview=method, preview_every=0.0)
    return ModelStore(settings, Folders(store.folders.root)), approx


def test_previews_arrive_during_the_job_and_leave_the_image_unchanged(store, tmp_path):
    live, _ = preview_store(store, tmp_path)
    shown = []
    params = Txt2Img.from_fields(**SMALL)
    with_previews = txt2img.run(live, params, on_preview=lambda image, step, total: shown.append((image, step, total)))
    plain = txt2img.run(store, params)
    assert [(s, t) for _, s, t in shown] == [(1, 4), (2, 4), (3, 4)]
    assert shown[0][0].size == (64, 72)  # the linear approximation, 8x the 8x9 latents
    assert np.array_equal(np.asarray(with_previews.images[0]), np.asarray(plain.images[0]))


def test_a_tiny_decoder_in_vae_approx_is_used_and_cached(store, tmp_path):
    from diffusers import AutoencoderTiny

    live, approx = preview_store(store, tmp_path)
    tiny = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                           num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4)
    tiny.save_pretrained(approx / "taesd-tiny")
    shown = []
    txt2img.run(live, Txt2Img.from_fields(**SMALL), on_preview=lambda image, step, total: shown.append(image))
    assert len(shown) == 3 and shown[0].size == (64, 72)
    rows = [row for row in live.resident_models() if row["kind"] == "preview_decoder"]
    assert [row["name"] for row in rows] == ["taesd-tiny"]
    assert preview_decoder(live).func.__name__ == "tiny_decode"


def test_previews_off_means_no_decoder(store, tmp_path):
    live, _ = preview_store(store, tmp_path, method="off")
    assert preview_decoder(live) is None
    shown = []
    txt2img.run(live, Txt2Img.from_fields(**SMALL), on_preview=lambda *a: shown.append(a))
    assert shown == []


def test_the_ui_streams_previews_into_the_gallery_then_the_images(demo_app):
    """Raw REST against the launched app (--preview-every 0 in the fixture): "generating"
    events carry a one-image gallery captioned as a preview, "complete" the saved files."""
    from test_hardening import fetch

    body = json.dumps({"prompt": "猫", "width": 64, "height": 64, "num_inference_steps": 4, "seed": 2}).encode()
    status, text, _ = fetch(demo_app, "/gradio_api/call/v2/txt2img", body, {"Content-Type": "application/json"})
    assert status == 200
    _, stream, _ = fetch(demo_app, f"/gradio_api/call/txt2img/{json.loads(text)['event_id']}")
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, re.MULTILINE)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "complete" and "generating" in kinds, kinds
    first = json.loads(next(data for kind, data in events if kind == "generating"))
    gallery = first[0]
    assert len(gallery) == 1 and "/4" in gallery[0]["caption"]
    final = json.loads(events[-1][1])[0]
    assert final and all(item["image"]["path"].endswith(".png") for item in final)
    assert not any("/4" in (item.get("caption") or "") for item in final)
