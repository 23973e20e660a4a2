"""Gaussian Parzen-window log-likelihood of held-out images under a generator's samples (Goodfellow et al. 2014,
Sec. 5, after Breuleux et al. 2011), the estimate the GAN paper's Table 1 reports.

The generator's N samples mu_1..mu_N (flattened, d pixels in [0, 1]) define a mixture of isotropic Gaussians; a
held-out image x gets

    log p(x) = log (1/N) sum_i N(x; mu_i, sigma^2 I)
             = logsumexp_i( -||x - mu_i||^2 / (2 sigma^2) ) - log N - (d/2) log(2 pi sigma^2)

The window sigma is chosen on the validation split from a grid (the paper's code: 10 values log-spaced in
[0.1, 1]) and the test split is scored with the chosen sigma; the report is the mean log-likelihood per image
and its standard error.

The paper used 10,000 samples (and 1,000 validation images for sigma); the defaults of the ``gan`` trainable use
fewer so an evaluation takes about a second on a CPU, which biases the estimate down (fewer mixture components).
The paper's own caveat applies in full: "this method of estimating the likelihood has somewhat high variance and
does not perform well in high dimensional spaces" (Theis et al. 2016 show how far it can be from the true
log-likelihood). Use it to compare runs of this code, not as a likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

# The paper's sigma grid (its parzen_ll.py: numpy.logspace(-1, 0, num=10)).
PAPER_SIGMAS: tuple[float, ...] = tuple(float(s) for s in np.logspace(-1.0, 0.0, num=10))


def parzen_log_likelihood(points: torch.Tensor, samples: torch.Tensor, sigmas: Sequence[float] | torch.Tensor,
                          chunk_size: int = 256) -> torch.Tensor:
    """log p(x) of every row of ``points`` (P, ...) under the Parzen window of ``samples`` (N, ...), for each
    sigma: an (S, P) float64 tensor. Rows are flattened; distances are computed once per chunk of points and
    reused for every sigma."""
    x = points.flatten(1).double()
    mu = samples.flatten(1).double()
    sigma = torch.as_tensor(sigmas, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)  # (S, 1, 1)
    n, d = mu.shape
    # - log N - (d/2) log(2 pi sigma^2): the normaliser of the mixture, one per sigma
    log_norm = -math.log(n) - 0.5 * d * torch.log(2.0 * math.pi * sigma.squeeze(-1) ** 2)  # (S, 1)
    out = []
    for start in range(0, len(x), chunk_size):
        chunk = x[start:start + chunk_size]
        # ||x - mu_i||^2 = ||x||^2 + ||mu_i||^2 - 2 x.mu_i (float64: the cancellation stays harmless)
        sq = (chunk.pow(2).sum(1, keepdim=True) + mu.pow(2).sum(1) - 2.0 * chunk @ mu.T).clamp(min=0.0)  # (p, N)
        # logsumexp_i( -||x - mu_i||^2 / (2 sigma^2) ), for every sigma at once: (S, p)
        out.append(torch.logsumexp(-sq.unsqueeze(0) / (2.0 * sigma**2), dim=2) + log_norm)
    return torch.cat(out, dim=1) if out else torch.empty(len(sigma), 0, dtype=torch.float64)


def parzen_evaluate(val_points: torch.Tensor, test_points: torch.Tensor, samples: torch.Tensor,
                    sigmas: Sequence[float] = PAPER_SIGMAS) -> dict[str, float]:
    """The paper's protocol: sigma = argmax over ``sigmas`` of the mean validation log-likelihood, then the test
    split's mean log-likelihood (and its standard error) under that sigma."""
    val_ll = parzen_log_likelihood(val_points, samples, sigmas).mean(1)  # (S,)
    best = int(val_ll.argmax())
    sigma = float(sigmas[best])
    test_ll = parzen_log_likelihood(test_points, samples, [sigma])[0]  # (P,)
    se = float(test_ll.std() / math.sqrt(len(test_ll))) if len(test_ll) > 1 else 0.0
    return {"val_parzen_ll": float(val_ll[best]), "test_parzen_ll": float(test_ll.mean()),
            "test_parzen_ll_se": se, "parzen_sigma": sigma}
