"""The search reward, in one place (MnasNet, Tan et al. 2019, eq. 2; plain NAS is its w = 0 case).

    reward(m) = ACC(m) * (LAT(m) / T) ** w,     w = alpha if LAT(m) <= T else beta

soft constraint: alpha = beta = -0.07 (MnasNet's choice: about +5% accuracy is worth 2x latency);
hard constraint: alpha = 0, beta = -1 (no bonus below T, a steep penalty above it);
accuracy: w = 0, the reward is the validation accuracy (Zoph & Le; optionally cubed, as their paper did).
"""

from __future__ import annotations

REWARDS: dict[str, tuple[float, float]] = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0), "accuracy": (0.0, 0.0),
                                           "accuracy3": (0.0, 0.0)}


def reward(accuracy: float, latency_ms: float, target_ms: float, kind: str = "soft") -> float:
    """MnasNet's latency-aware reward of one child (``kind`` in :data:`REWARDS`)."""
    alpha, beta = REWARDS[kind]
    w = alpha if latency_ms <= target_ms else beta  # w = alpha if LAT <= T else beta
    acc = accuracy ** 3 if kind == "accuracy3" else accuracy  # Zoph & Le cube the accuracy in their final runs
    return acc * (latency_ms / target_ms) ** w  # ACC(m) * (LAT(m) / T) ** w
