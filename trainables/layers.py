"""Blocks shared by several methods: the option-A shortcut, per-block seeds, modules with their own random draws."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_MASK64 = (1 << 64) - 1


def block_seed(seed: int, index: int) -> int:
    """Deterministic, well-mixed seed for block `index` (SplitMix64 finaliser of seed and index).

    Mixing keeps the blocks' Bernoulli streams unrelated (seed 0 / block 1 must not equal seed 1 /
    block 0). Folded to 32 bits because the CPU generator (mt19937) only uses the low 32 bits.
    """
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z ^ (z >> 32)) & 0xFFFFFFFF


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut (He et al.'s option A, used by Huang et al.): 2x2 average pooling with
    stride 2, then zero-padding of the new channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_ch - in_ch
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            # ceil_mode: output size ceil(H/2) = size of the stride-2, pad-1 conv branch, also for odd H
            # (28 -> 14 -> 7 -> 4); the overhanging window averages only its valid pixels.
            x = F.avg_pool2d(x, kernel_size=self.stride, stride=self.stride, ceil_mode=True)
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # zeros appended on the channel dim
        return x


class SeededDraws:
    """Mixin for a module that draws from its own CPU ``torch.Generator``, saved in ``state_dict()``.

    Replicas built with the same seed draw the same values in the same step (a data-parallel group stays one model),
    draws on the global RNG (dropout, augmentation) cannot change them, and a resumed run continues the sequence.
    CPU on purpose: the draws are decided on the host, so there is no device sync even on GPU.
    """

    generator: torch.Generator
    # True for draws that should differ between data-parallel ranks (swapout's per-element masks: in one large
    # batch every sample gets its own mask); False for per-mini-batch draws that must agree (stochastic depth
    # drops the same block on every rank, so the group stays one model).
    rank_varying: bool = False
    draw_rank: int | None = None  # the rank in a data-parallel group, None in one process (set by the loop)

    def seed_draws(self, seed: int) -> None:
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def draw_generator(self) -> torch.Generator:
        """The generator for this forward's draws: the shared generator itself in one process (or for draws that
        agree across ranks); in a group, for ``rank_varying`` draws, a generator seeded from one draw of the shared
        one and the rank, so every rank advances the shared state alike (rank 0's checkpoint resumes them all)
        while the masks differ between ranks."""
        if not self.rank_varying or self.draw_rank is None:
            return self.generator
        base = int(torch.randint(0, 2**62, (), generator=self.generator))
        return torch.Generator(device="cpu").manual_seed(block_seed(base, self.draw_rank))

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"rng_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        # .cpu(): a checkpoint loaded with map_location="cuda" would otherwise carry a CUDA tensor.
        self.generator.set_state(state["rng_state"].cpu())
