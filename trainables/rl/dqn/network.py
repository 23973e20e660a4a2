"""The Q-networks of the DQN papers: an observation batch -> one Q-value per action (plain PyTorch, no RLlib)."""

from __future__ import annotations

import torch
from torch import nn

from trainables.registry import ConfigError

NETWORKS = ("auto", "mnih2013", "nature2015", "mlp")


class ScaleUint8(nn.Module):
    """uint8 pixels -> float in [0, 1] (the network's first op, so frames stay uint8 until here)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0


def build_q_network(
    network: str, obs_shape: tuple[int, ...], num_actions: int, mlp_hiddens: list[int] | tuple[int, ...] = (64, 64)
) -> nn.Sequential:
    """The Q-network: an observation batch -> one Q-value per action.

    mnih2013 (the 2013 paper): 84x84x4 -> conv 16 8x8 stride 4 -> conv 32 4x4 stride 2 -> fc 256 -> |A|, ReLU.
    nature2015: conv 32 8x8/4 -> conv 64 4x4/2 -> conv 64 3x3/1 -> fc 512 -> |A|. mlp: vector observations.
    Image inputs are uint8 (C, H, W) and scaled to [0, 1] inside the network, so replay stays uint8.
    """
    if network == "auto":
        network = "mlp" if len(obs_shape) == 1 else "mnih2013"
    if network == "mlp":
        if len(obs_shape) != 1:
            raise ConfigError(f"network=mlp wants vector observations, got shape {obs_shape}")
        layers: list[nn.Module] = []
        width = obs_shape[0]
        for hidden in mlp_hiddens:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        return nn.Sequential(*layers, nn.Linear(width, num_actions))
    if len(obs_shape) != 3:
        raise ConfigError(f"network={network} wants image observations (C, H, W), got shape {obs_shape}")
    channels = obs_shape[0]
    if network == "mnih2013":
        convs = [nn.Conv2d(channels, 16, 8, stride=4), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU()]
        hidden = 256
    elif network == "nature2015":
        convs = [
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
        ]
        hidden = 512
    else:
        raise ConfigError(f"network={network!r} is not one of {', '.join(map(repr, NETWORKS))}")
    trunk = nn.Sequential(ScaleUint8(), *convs, nn.Flatten())
    with torch.no_grad():
        flat = trunk(torch.zeros(1, *obs_shape, dtype=torch.uint8)).shape[1]  # 2013 on 84x84: 32 * 9 * 9 = 2592
    return nn.Sequential(*trunk, nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))
