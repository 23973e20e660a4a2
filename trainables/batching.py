"""Batches of an image :class:`trainables.data.Split`: normalised, augmented on the device, sharded per DDP rank.

Batches are gathered by indexing the whole uint8 tensor (``x[idx]``) instead of a ``DataLoader`` calling
``__getitem__`` and ``collate`` per sample (for small images that per-sample Python work dominates the step), and
augmentation is vectorised over the batch for the same reason. The index order still comes from
``DistributedSampler`` + ``BatchSampler``, so DDP ranks get disjoint shards and equal batch counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DistributedSampler

from trainables.data import AUGMENTATIONS, Split


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator | None, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation of a batch (B, C, H, W), vectorised over samples.

    * ``"crop"``: zero-pad ``pad`` pixels on every side, then take a random HxW window per sample, i.e.
      translate each image by an independent (dy, dx) in [-pad, pad]^2 with zero fill.
    * ``"crop_flip"``: the crop, then a horizontal flip of each sample with probability 0.5
      (He et al. 2016; Huang et al. 2016, stochastic depth).
    * ``"none"``: ``x`` unchanged.

    Padding is done with zeros on whatever ``x`` holds. :class:`BatchLoader` calls this AFTER
    normalisation, so the fill is the per-channel dataset mean (the usual ToTensor-Normalize-pad order
    would fill with black instead; with mean fill the padded border carries no signal).

    Random numbers come from ``generator`` (on its own device; results are moved to ``x.device``), so the
    output is a deterministic function of the generator state: crop offsets (rows, then columns) are drawn
    first, then the flip coins.
    """
    if mode == "none":
        return x
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation mode {mode!r}; expected one of {AUGMENTATIONS}")
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    gen_device = generator.device if generator is not None else x.device
    if pad > 0:
        offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=gen_device).to(x.device)
        # windows[k, c, i, j] is the HxW window of sample k whose top-left corner is padded pixel (i, j);
        # a view (two unfolds), so picking one window per sample is a single gather-like index.
        windows = F.pad(x, (pad, pad, pad, pad)).unfold(2, h, 1).unfold(3, w, 1)  # (B, C, 2p+1, 2p+1, H, W)
        x = windows[torch.arange(b, device=x.device), :, offsets[0], offsets[1]]  # (B, C, H, W)
    if mode == "crop_flip":
        flip = (torch.rand(b, generator=generator, device=gen_device) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class BatchLoader:
    """Iterates normalised, optionally augmented (x, y) mini-batches of one :class:`Split`.

    ``x`` comes out float32, ``(x / 255 - mean) / std`` per channel, augmented with :func:`augment_batch`
    when ``augment != "none"`` (after normalisation, so padding fills with the mean), on ``device``; ``y``
    is int64 on ``device``.

    Index order comes from ``DistributedSampler(num_replicas=world_size, rank=rank, shuffle=shuffle,
    seed=seed, drop_last=False)`` inside a ``BatchSampler(batch_size, drop_last)``: every rank of a DDP
    group gets the same number of batches and a disjoint shard (when N is not divisible by
    ``world_size`` the sampler repeats a few samples to even the shards out, as a DataLoader would).
    Batches are gathered by tensor indexing (``x[idx]``) instead of per-sample ``__getitem__``/collate.

    The whole split is moved to ``device`` once, still as uint8 (CIFAR train: 138 MB), so that on a GPU
    indexing, conversion and augmentation all run there and only indices cross the bus.

    Determinism: the order and the augmentation are functions of (seed, rank, epoch) only; iterating the
    same epoch twice yields identical batches. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, split: Split, *, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 augment: str = "none", shuffle: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False, device: str | torch.device = "cpu") -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}; expected one of {AUGMENTATIONS}")
        channels = split.x.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.device = torch.device(device)
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self._x = split.x.to(self.device)
        self._y = split.y.to(self.device)
        self.sampler: DistributedSampler = DistributedSampler(
            range(len(split)), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.batch_sampler = BatchSampler(self.sampler, batch_size=batch_size, drop_last=drop_last)
        # (x / 255 - mean) / std  ==  x * scale + shift, one fused multiply-add per batch.
        std_t = torch.tensor(std, dtype=torch.float64)
        mean_t = torch.tensor(mean, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std_t)).float().view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).float().view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reseeds the sampler's order and the augmentation stream (seed, rank, epoch)."""
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def _augment_generator(self) -> torch.Generator:
        # SeedSequence mixes the three numbers well, so nearby (seed, rank, epoch) give unrelated streams.
        words = [v % 2**64 for v in (self.seed, self.rank, self.epoch)]
        state = int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0])
        return torch.Generator().manual_seed(state)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = self._augment_generator()
        for batch in self.batch_sampler:
            idx = torch.as_tensor(batch, dtype=torch.long).to(self.device, non_blocking=True)
            x = torch.addcmul(self._shift, self._x[idx].float(), self._scale)
            yield augment_batch(x, self.augment, generator), self._y[idx]


def pixel_loader(split: Split, **options: Any) -> BatchLoader:
    """A shuffled :class:`BatchLoader` of ``split``'s images as pixel / 255 in [0, 1], not standardised: generative
    models (GANs, VAEs) model the pixels themselves. ``options`` are BatchLoader's (batch_size, seed, rank, ...)."""
    channels = split.x.shape[1]
    return BatchLoader(split, mean=(0.0,) * channels, std=(1.0,) * channels, shuffle=True, **options)
