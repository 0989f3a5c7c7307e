"""Demo upscalers: tiny RRDBNet (x4, x2) and SRVGGNetCompact files in the published key layouts."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..formats.esrgan import RRDBNet, SRVGGNetCompact


# 4. The demo bundle's upscalers ----------------------------------------------------------
def _calibrate(net: nn.Module, last: nn.Conv2d, probe: torch.Tensor) -> None:
    """Rescale the last conv so a random net's output sits around mid-gray with a visible
    spread, instead of clipping to black or white (tests compare tiles on real values)."""
    with torch.no_grad():
        out = net(probe) - last.bias.view(1, -1, 1, 1)
        gain = 0.15 / out.std(dim=(0, 2, 3)).clamp_min(1e-6)
        last.weight.mul_(gain.view(-1, 1, 1, 1))
        last.bias.copy_(0.5 - out.mean(dim=(0, 2, 3)) * gain)


def save_demo_upscalers(folder: Path, seed: int = 0) -> None:
    """One tiny random upscaler per architecture, in the published file layouts: a wrapped
    x4 RRDBNet ``.pth``, a bare x2 RRDBNet ``.pth``, an SRVGGNetCompact ``.safetensors``.
    The SRVGG residual branch is damped so its output still shows the input image."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    probe = torch.rand(1, 3, 32, 32, generator=generator)
    torch.manual_seed(seed)
    x4 = RRDBNet(scale=4, num_feat=8, num_block=1, num_grow_ch=4)
    _calibrate(x4, x4.conv_last, probe)
    torch.save({"params_ema": x4.state_dict()}, folder / "RealESRGAN_x4plus-tiny.pth")
    x2 = RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4)
    _calibrate(x2, x2.conv_last, probe)
    torch.save(x2.state_dict(), folder / "RealESRGAN_x2plus-tiny.pth")
    compact = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4)
    with torch.no_grad():
        compact.body[-1].weight.mul_(0.1)
        compact.body[-1].bias.zero_()
    state = {k: v.contiguous() for k, v in compact.state_dict().items()}
    save_file(state, str(folder / "realesr-general-x4v3-tiny.safetensors"))
