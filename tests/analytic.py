"""Closed-form references for x0 ~ N(0, I), x1 ~ N(mu, sigma^2 I) independent, x_t = (1-t) x0 + t x1.

Written from the math, not from the code under test:
- the ODE of the marginal velocity moves x_t = t mu + s(t) z with s(t) = sqrt((1-t)^2 + t^2 sigma^2),
  z = x0 at t = 0; so the exact flow map from t to t' is x -> t' mu + s(t') (x - t mu) / s(t);
- the marginal velocity is v(x, t) = mu + s'(t)/s(t) (x - t mu), s'(t) = (t sigma^2 - (1 - t)) / s(t);
  at t = 0 it is mu - x, so one Euler step from x0 lands on mu for every x0 (the collapse);
- the exact shortcut (average velocity over [t, t + d]) is (flow(x, t, t + d) - x) / d, so one
  step of size 1 maps x0 to mu + sigma x0.
"""

from __future__ import annotations

import torch
from torch import nn


def s(t, sigma):
    return torch.sqrt((1 - t) ** 2 + t**2 * sigma**2)


def flow_map(x, t, t2, mu, sigma):
    tb = t.reshape(-1, *([1] * (x.dim() - 1)))
    t2b = t2.reshape(-1, *([1] * (x.dim() - 1)))
    return t2b * mu + s(t2b, sigma) * (x - tb * mu) / s(tb, sigma)


class GaussianVelocity(nn.Module):
    """The exact marginal velocity field; ignores d and y."""

    def __init__(self, mu: float, sigma: float):
        super().__init__()
        self.mu, self.sigma = mu, sigma

    def forward(self, x, t, d, y):
        tb = t.reshape(-1, *([1] * (x.dim() - 1)))
        st = s(tb, self.sigma)
        ds = (tb * self.sigma**2 - (1 - tb)) / st
        return self.mu + ds / st * (x - tb * self.mu)


class GaussianShortcut(nn.Module):
    """The exact shortcut s(x, t, d): average velocity over [t, t + d]; the velocity at d = 0."""

    def __init__(self, mu: float, sigma: float):
        super().__init__()
        self.mu, self.sigma = mu, sigma
        self.velocity = GaussianVelocity(mu, sigma)

    def forward(self, x, t, d, y):
        db = d.reshape(-1, *([1] * (x.dim() - 1)))
        jump = (flow_map(x, t, t + d, self.mu, self.sigma) - x) / db.clamp(min=1e-12)
        return torch.where(db > 0, jump, self.velocity(x, t, d, y))
