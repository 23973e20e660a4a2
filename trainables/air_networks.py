"""AIR's networks (Eslami et al. 2016, Sec. 2; default sizes as in Pyro's reimplementation of the multi-MNIST model:
an LSTM of 256, MLPs of 200, z_what of 50; the glimpse is 20x20 here, Pyro reads 28x28): the recurrent
inference network q(z | x), the object decoder p(x | z) and the NVIL-style baseline. The ELBO and its gradient
estimator live in :mod:`trainables.air`.

One inference step i (i = 1..N), the LSTM state h_i summarising the image and the objects explained so far:

    h_i = LSTM(h_{i-1}, [x, z_where_{i-1}, z_what_{i-1}, z_pres_{i-1}])
    z_pres_i  ~ Bernoulli(z_pres_{i-1} * sigmoid(w_pres h_i))           (once 0, every later step is 0)
    z_where_i ~ N(mu_where(h_i), sigma_where(h_i))                       (scale s, shift x, y)
    z_what_i  ~ N(mu_what(g_i), sigma_what(g_i)),  g_i = glimpse(x, z_where_i)   (the inverse transform)

and the generative model renders  x_hat = sum_i z_pres_i * place(sigmoid(decoder(z_what_i)), z_where_i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.spatial_transformer import glimpse, place


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class AirNetwork(nn.Module):
    """The inference LSTM with its heads, the glimpse encoder and the object decoder.

    ``forward(x, greedy)`` runs all ``max_steps`` steps (a step after z_pres = 0 changes nothing: its object is
    multiplied by 0 and its terms are masked) and returns the per-step distributions, samples and the
    reconstruction. ``greedy``: z_pres_i = [p_i > 0.5] and the means of z_where, z_what (counting, pictures).
    """

    def __init__(self, canvas_size: int, object_size: int, glimpse_size: int, max_steps: int, z_what_dim: int,
                 lstm_size: int, hidden_size: int, scale_prior_mean: float) -> None:
        super().__init__()
        self.canvas_size, self.object_size, self.glimpse_size = canvas_size, object_size, glimpse_size
        self.max_steps, self.z_what_dim, self.scale_prior_mean = max_steps, z_what_dim, scale_prior_mean
        self.rnn = nn.LSTMCell(canvas_size ** 2 + 3 + z_what_dim + 1, lstm_size)
        self.pres_head = nn.Linear(lstm_size, 1)
        self.where_head = nn.Linear(lstm_size, 6)  # loc and pre-softplus scale of (s, x, y)
        self.encoder = _mlp(glimpse_size ** 2, hidden_size, 2 * z_what_dim)
        self.decoder = _mlp(z_what_dim, hidden_size, object_size ** 2)
        with torch.no_grad():
            # Start small and centred (loc of s = the digit's size, shift 0, small sigma) and with dark windows
            # (as Pyro's AIR: a decoder bias of -2), so early samples neither blow up the canvas nor fly off it.
            self.where_head.weight.mul_(0.1)
            self.where_head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -2.0, -2.0, -2.0]))
            self.decoder[-1].bias.fill_(-2.0)

    def decode(self, z_what: torch.Tensor) -> torch.Tensor:
        """(B, D) z_what -> (B, 1, d, d) object windows in [0, 1]."""
        return torch.sigmoid(self.decoder(z_what)).view(-1, 1, self.object_size, self.object_size)

    def forward(self, x: torch.Tensor, greedy: bool = False) -> dict[str, torch.Tensor]:
        b, steps = len(x), self.max_steps
        flat = x.flatten(1)
        h = c = flat.new_zeros(b, self.rnn.hidden_size)
        z_where, z_what, z_pres = flat.new_zeros(b, 3), flat.new_zeros(b, self.z_what_dim), flat.new_ones(b, 1)
        canvas = torch.zeros_like(x)
        out: dict[str, list[torch.Tensor]] = {k: [] for k in ("p_pres", "mask", "z_pres", "where_loc", "where_scale",
                                                               "what_loc", "what_scale", "z_where", "hidden")}
        for _ in range(steps):
            mask = z_pres  # z_pres_{i-1}: step i is sampled only while every earlier object was present
            h, c = self.rnn(torch.cat([flat, z_where, z_what, z_pres], 1), (h, c))
            p = torch.sigmoid(self.pres_head(h)).clamp(1e-6, 1 - 1e-6)
            z_pres = mask * ((p > 0.5).float() if greedy else torch.bernoulli(p.detach()))
            where = self.where_head(h)
            where_loc = where[:, :3] + where.new_tensor([self.scale_prior_mean, 0.0, 0.0])
            where_scale = F.softplus(where[:, 3:]) + 1e-4
            z_where = where_loc if greedy else where_loc + where_scale * torch.randn_like(where_loc)  # rsample
            what = self.encoder(glimpse(x, z_where, self.glimpse_size).flatten(1))
            what_loc, what_scale = what[:, :self.z_what_dim], F.softplus(what[:, self.z_what_dim:]) + 1e-4
            z_what = what_loc if greedy else what_loc + what_scale * torch.randn_like(what_loc)  # rsample
            canvas = canvas + z_pres[:, :, None, None] * place(self.decode(z_what), z_where, self.canvas_size)
            for key, value in (("p_pres", p), ("mask", mask), ("z_pres", z_pres), ("where_loc", where_loc),
                               ("where_scale", where_scale), ("what_loc", what_loc), ("what_scale", what_scale),
                               ("z_where", z_where), ("hidden", h)):
                out[key].append(value)
        result = {k: torch.stack(v, 1) for k, v in out.items()}  # (B, N, ...)
        for key in ("p_pres", "mask", "z_pres"):
            result[key] = result[key].squeeze(-1)  # (B, N)
        result["canvas"] = canvas
        return result


class Baseline(nn.Module):
    """b_i(x, h_i): an input-dependent baseline per inference step (NVIL, Mnih & Gregor 2014, as the paper uses),
    fed the image and the inference LSTM's state h_i (detached: the baseline never trains the inference network).

    NVIL's moving statistics live here as buffers (saved with the model, so a resume continues them): ``mean[i]``
    of step i's learning signal (the network learns the input-dependent rest) and ``var`` of the centred signal
    (the signal is divided by max(1, sqrt(var))).
    """

    def __init__(self, canvas_size: int, lstm_size: int, hidden_size: int, max_steps: int) -> None:
        super().__init__()
        self.net = _mlp(canvas_size ** 2 + lstm_size, hidden_size, 1)
        self.register_buffer("mean", torch.zeros(max_steps))
        self.register_buffer("var", torch.ones(()))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) images and (B, N, H) states -> (B, N) baselines."""
        flat = x.flatten(1)[:, None].expand(-1, hidden.shape[1], -1)
        return self.net(torch.cat([flat, hidden.detach()], -1)).squeeze(-1)
