"""DeepCache-style feature caching (approximate; opt-in per job).

Neighbouring denoising steps produce nearly the same deep U-Net features. On a "refresh" step
the whole U-Net runs and the outputs of the deep blocks are kept; on the steps in between
only the shallowest level runs (conv_in, the first down block, the last up block) and the deep
blocks hand back what they computed last time (Ma et al., DeepCache, CVPR 2024). Output is
approximate: bench/RESULTS.md reports its PSNR against the exact image next to its speed.

Built on diffusers' public hook registry (``diffusers.hooks.ModelHook``); the hooks are added
for one job and always removed afterwards, so the shared U-Net is never left altered.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from diffusers.hooks import HookRegistry, ModelHook

HOOK = "danqing_deepcache"


@dataclass
class _Clock:
    interval: int
    calls: int = 0

    @property
    def refresh(self) -> bool:
        return (self.calls - 1) % self.interval == 0


class _CountCalls(ModelHook):
    """On the U-Net: counts its calls (one per denoising step, CFG batched)."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def pre_forward(self, module, *args, **kwargs):
        self.clock.calls += 1
        return args, kwargs


class _ReuseOutput(ModelHook):
    """On a deep block: runs on refresh steps, otherwise returns its last output."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock
        self.cached = None

    def new_forward(self, module, *args, **kwargs):
        if self.clock.refresh or self.cached is None:
            self.cached = self.fn_ref.original_forward(*args, **kwargs)
        return self.cached


def _deep_blocks(unet) -> list:
    """Every block except the shallowest level (first down block, last up block)."""
    blocks = [*unet.down_blocks[1:], *unet.up_blocks[:-1]]
    if unet.mid_block is not None:
        blocks.append(unet.mid_block)
    return blocks


@contextmanager
def deep_cache(unet, interval: int):
    """Within the block, the U-Net refreshes its deep features every ``interval`` calls."""
    if interval <= 1:
        yield
        return
    clock = _Clock(interval)
    modules = [unet, *_deep_blocks(unet)]
    try:
        HookRegistry.check_if_exists_or_initialize(unet).register_hook(_CountCalls(clock), HOOK)
        for block in modules[1:]:
            HookRegistry.check_if_exists_or_initialize(block).register_hook(_ReuseOutput(clock), HOOK)
        yield
    finally:
        for module in modules:
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                registry.remove_hook(HOOK, recurse=False)
