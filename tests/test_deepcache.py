"""DeepCache-style caching: the deep blocks really run less often, the result is close to the
exact image but not equal (it is labelled approximate), and the shared U-Net is left clean."""

import numpy as np

from pipelines.tasks import txt2img
from pipelines.requests import Txt2Img


def run(store, **kwargs):
    params = Txt2Img.from_fields(prompt="竹林里的熊猫", width=64, height=64, num_inference_steps=6, seed=8, **kwargs)
    return np.asarray(txt2img.run(store, params).images[0]).astype(float)


def psnr(a, b) -> float:
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_deep_blocks_run_every_nth_step_and_hooks_are_removed(store):
    unet = store.base().unet
    calls = {"deep": 0, "shallow": 0}
    handles = [
        unet.down_blocks[1].resnets[0].register_forward_hook(lambda *a: calls.__setitem__("deep", calls["deep"] + 1)),
        unet.down_blocks[0].resnets[0].register_forward_hook(lambda *a: calls.__setitem__("shallow", calls["shallow"] + 1)),
    ]
    try:
        exact = run(store)
        assert calls == {"deep": 6, "shallow": 6}
        calls.update(deep=0, shallow=0)
        cached = run(store, deepcache=3)
        assert calls == {"deep": 2, "shallow": 6}  # steps 1 and 4 refresh
    finally:
        for handle in handles:
            handle.remove()
    assert not np.array_equal(exact, cached)
    assert psnr(exact, cached) > 15  # close to the exact image, not noise
    assert np.array_equal(run(store), exact)  # nothing left on the shared U-Net
    assert not hasattr(unet, "_diffusers_hook") or not unet._diffusers_hook.hooks


def test_deepcache_is_validated():
    import pytest

    from pipelines.errors import ParamError

    with pytest.raises(ParamError):
        Txt2Img.from_fields(prompt="x", deepcache=9)
    assert Txt2Img.from_fields(prompt="x", deepcache=1).deepcache == 0
