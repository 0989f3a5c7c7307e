"""ESRGAN-family super-resolution networks, read from the files users download.

Real-ESRGAN's two published architectures are written out here with the exact state-dict key
names of the released weights, so ``RealESRGAN_x4plus.pth``, ``RealESRGAN_x2plus.pth``,
``RealESRGAN_x4plus_anime_6B.pth`` (RRDBNet) and ``realesr-general-x4v3.pth``,
``realesr-animevideov3.pth`` (SRVGGNetCompact) load without realesrgan/basicsr, whose pinned
torchvision imports break on current torch. Old-style ESRGAN files (``model.0.weight``, e.g.
4x-UltraSharp) are renamed to the RRDBNet layout. Scale, block count and widths are read from
the weights, never from the file name. Anything else goes to ``spandrel`` when it is installed.

Files are read safely: ``.pth`` only through ``torch.load(weights_only=True)`` (a pickle that
carries code or other objects is refused, never run), ``.safetensors`` through safetensors.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .weights import read_tensors

log = logging.getLogger(__name__)


# 1. The architectures, key-for-key as published ---------------------------------------------
class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions with a scaled residual (ESRGAN's RDB)."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs and a scaled skip."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


def pixel_unshuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """basicsr's channel order (c, dy, dx), which the x2/x1 weights were trained with."""
    b, c, hh, hw = x.size()
    h, w = hh // scale, hw // scale
    x = x.view(b, c, h, scale, w, scale)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * scale * scale, h, w)


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator. The trunk always upsamples x4; x2 and x1 models first
    pixel-unshuffle the input by 2 or 4 (so ``conv_first`` takes 12 or 48 channels)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        self.scale = scale
        unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 2:
            x = pixel_unshuffle(x, 2)
        elif self.scale == 1:
            x = pixel_unshuffle(x, 4)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style network: a plain conv/PReLU stack at input resolution,
    a pixel shuffle, and the nearest-upsampled input added back."""

    def __init__(
        self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16, upscale: int = 4
    ) -> None:
        super().__init__()
        self.upscale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


class Upscaler(nn.Module):
    """A loaded network and what the tiler needs: its scale and the multiple its input sides
    must be (2 for pixel-unshuffle x2 models). Takes and returns BCHW RGB in [0, 1]."""

    def __init__(self, net: nn.Module, arch: str, scale: int, multiple: int = 1) -> None:
        super().__init__()
        self.net = net
        self.arch = arch
        self.scale = scale
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:  # the tiler aligns tiles already; this keeps direct calls safe
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.net(x)[..., : h * self.scale, : w * self.scale]


# 2. Reading a file safely ----------------------------------------------------------------
def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` (bare, or under ``params_ema``/``params``) or ``.safetensors``."""
    return read_tensors(path, name, "upscaler", "upscaler_unknown_arch", ("params_ema", "params", "state_dict", "model"))


# 3. Recognising the architecture from the weights ----------------------------------------
_OLD_RDB = re.compile(r"^model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)$")
_OLD_TAIL = {"model.0": "conv_first", "model.3": "conv_up1", "model.6": "conv_up2", "model.8": "conv_hr", "model.10": "conv_last"}


def _rename_old_esrgan(state: dict) -> dict | None:
    """Old ESRGAN x4 keys (``model.1.sub.0.RDB1.conv1.0.weight``) to RRDBNet's; None if the
    layout is not the x4 one."""
    if "model.0.weight" not in state or "model.10.weight" not in state:
        return None
    blocks = {int(m.group(1)) for k in state if (m := _OLD_RDB.match(k))}
    trunk = len(blocks)
    renamed = {}
    for key, value in state.items():
        if m := _OLD_RDB.match(key):
            renamed[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
        elif key.startswith(f"model.1.sub.{trunk}."):
            renamed["conv_body." + key.rsplit(".", 1)[1]] = value
        elif (prefix := key.rsplit(".", 1)[0]) in _OLD_TAIL:
            renamed[f"{_OLD_TAIL[prefix]}.{key.rsplit('.', 1)[1]}"] = value
        else:
            return None
    return renamed


def _block_count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({int(m.group(1)) for k in state if (m := rx.match(k))})


def _rrdbnet(state: dict) -> Upscaler | None:
    needed = ("conv_first.weight", "conv_body.weight", "conv_up1.weight", "conv_up2.weight", "conv_hr.weight", "conv_last.weight", "body.0.rdb1.conv1.weight")
    if not all(k in state for k in needed):
        return None
    num_feat, in_total = state["conv_first.weight"].shape[:2]
    num_out = state["conv_last.weight"].shape[0]
    # The input is pixel-unshuffled by 1, 2 or 4 before conv_first: the channel ratio is the scale.
    scale = {num_out: 4, num_out * 4: 2, num_out * 16: 1}.get(in_total)
    if scale is None:
        return None
    net = RRDBNet(
        num_in_ch=num_out,
        num_out_ch=num_out,
        scale=scale,
        num_feat=num_feat,
        num_block=_block_count(state, r"^body\.(\d+)\.rdb1\.conv1\.weight$"),
        num_grow_ch=state["body.0.rdb1.conv1.weight"].shape[0],
    )
    net.load_state_dict(state, strict=True)
    return Upscaler(net, "RRDBNet", scale, multiple={4: 1, 2: 2, 1: 4}[scale])


def _srvgg(state: dict) -> Upscaler | None:
    first = state.get("body.0.weight")
    if first is None or first.ndim != 4 or state.get("body.1.weight") is None or state["body.1.weight"].ndim != 1:
        return None  # no PReLU after the first conv: a ReLU variant we cannot tell apart
    last = max(int(m.group(1)) for k in state if (m := re.match(r"^body\.(\d+)\.weight$", k)))
    num_feat, num_in = first.shape[:2]
    out_total = state[f"body.{last}.weight"].shape[0]
    scale = math.isqrt(out_total // num_in)
    if last % 2 or scale * scale * num_in != out_total:
        return None
    net = SRVGGNetCompact(num_in_ch=num_in, num_out_ch=num_in, num_feat=num_feat, num_conv=(last - 2) // 2, upscale=scale)
    net.load_state_dict(state, strict=True)
    return Upscaler(net, "SRVGGNetCompact", scale)


def _spandrel(state: dict, name: str) -> Upscaler | None:
    """Any other architecture spandrel knows (SwinIR, HAT, DAT, ...), when it is installed."""
    try:
        from spandrel import ImageModelDescriptor, ModelLoader
    except ImportError:
        return None
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except Exception as exc:
        log.warning("spandrel does not recognise %s: %s", name, exc)
        return None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.input_channels != 3 or descriptor.output_channels != 3:
        return None
    multiple = max(1, int(getattr(descriptor.size_requirements, "multiple_of", 1)))
    return Upscaler(descriptor.model, f"spandrel:{descriptor.architecture.name}", int(descriptor.scale), multiple)


def build_upscaler(state: dict, name: str) -> Upscaler:
    """The network a state dict describes; ``upscaler_unknown_arch`` when none fits."""
    state = _rename_old_esrgan(state) or state
    for build in (_rrdbnet, _srvgg):
        try:
            model = build(state)
        except RuntimeError as exc:  # keys matched the pattern, shapes did not
            log.warning("%s looks like %s but does not load: %s", name, build.__name__, exc)
            model = None
        if model is not None:
            break
    else:
        model = _spandrel(state, name)
    if model is None or model.scale < 1:
        raise ModelError("upscaler_unknown_arch", name=name)
    return model


def load_upscaler_file(path: Path, name: str, device: torch.device, dtype: torch.dtype) -> Upscaler:
    """Read, recognise and place one upscaler file; eval mode, no gradients."""
    model = build_upscaler(read_state_dict(path, name), name)
    model.eval().requires_grad_(False)
    model.to(device=device, dtype=dtype)
    log.info("loaded upscaler %s: %s x%d on %s/%s", name, model.arch, model.scale, device, dtype)
    return model


