"""Training timestep distributions: the same three families, formulas and parameters as our
Rust implementation `flux2_calib::timesteps` (calib/src/timesteps.rs and
calib/src/timesteps/logit_normal.rs), re-implemented here for PyTorch training:

* ``ts``  shifted uniform: u ~ U(0, 1), t = s(alpha, u) = alpha u / (1 + (alpha - 1) u).
* ``ln``  logit-normal: logit t ~ N(mu + ln alpha, sigma^2).
* ``pln`` plateau logit-normal: the ``ln`` density f up to its mode t*, the constant f(t*)
          after it, divided by Z = F(t*) + f(t*)(1 - t*). t* is the argmax of the *shifted*
          density, found as the root of h(x) = x - mu' - sigma^2 tanh(x / 2) in x = logit t
          (for sigma^2 > 2 the global maximum of the two peaks, ties to the smaller t).

Defaults are the Rust ``Params::default()``: alpha = 1, mu = 0, sigma = 1. Sampling maps seeded
uniforms through the inverse cdf, as ``Distribution::sample`` does (the uniform stream itself is
torch's, not the Rust xoshiro256++).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

_N = NormalDist()


def shift(alpha: float, u):
    return alpha * u / (1.0 + (alpha - 1.0) * u)


def _log_pdf_logit(x: float, loc: float, sigma: float) -> float:
    """ln f at t = sigmoid(x) for the logit-normal with location loc."""
    z = (x - loc) / sigma
    log_t_1mt = -abs(x) - 2.0 * math.log1p(math.exp(-abs(x)))  # ln(t (1 - t))
    return -0.5 * z * z - 0.5 * math.log(2 * math.pi) - math.log(sigma) - log_t_1mt


def _bisect(h, lo: float, hi: float) -> float:
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if h(mid) < 0:
            lo = mid
        else:
            hi = mid
    return hi if abs(h(hi)) < abs(h(lo)) else lo


def mode_logit(loc: float, sigma: float) -> float:
    """x* = logit t*, the global maximum of the logit-normal density (smaller t on a tie)."""
    s2 = sigma * sigma
    h = lambda x: x - loc - s2 * math.tanh(0.5 * x)  # noqa: E731
    lo, hi = loc - s2, loc + s2
    if s2 <= 2.0:
        return _bisect(h, lo, hi)
    xc = 2.0 * math.acosh(sigma / math.sqrt(2.0))
    left = _bisect(h, lo, -xc) if lo <= -xc and h(-xc) >= 0 else None
    right = _bisect(h, xc, hi) if hi >= xc and h(xc) <= 0 else None
    if left is not None and right is not None:
        fl, fr = _log_pdf_logit(left, loc, sigma), _log_pdf_logit(right, loc, sigma)
        return right if fr - fl > 1e-12 * (1 + max(abs(fl), abs(fr))) else left
    if left is not None:
        return left
    if right is not None:
        return right
    return _bisect(h, lo, hi)


class TimestepDist:
    """One of ts / ln / pln with the Rust parameters (alpha, mu, sigma)."""

    def __init__(self, kind: str, alpha: float = 1.0, mu: float = 0.0, sigma: float = 1.0):
        if kind not in ("ts", "ln", "pln"):
            raise ValueError(f"--dist '{kind}': expected ts, ln or pln")
        if not (1e-50 <= alpha <= 1e50):
            raise ValueError(f"--alpha {alpha}: must be in [1e-50, 1e50]")
        if not (0 < sigma <= 20):
            raise ValueError(f"--sigma {sigma}: must be in (0, 20]")
        self.kind, self.alpha, self.mu, self.sigma = kind, alpha, mu, sigma
        self.loc = mu + math.log(alpha)
        if kind == "pln":
            x = mode_logit(self.loc, sigma)
            z = (x - self.loc) / sigma
            self.mode = 1.0 / (1.0 + math.exp(-x))
            self.peak = math.exp(_log_pdf_logit(x, self.loc, sigma))
            self.mass_before = _N.cdf(z)
            self.norm = self.mass_before + _N.pdf(z) / (sigma * self.mode)

    def quantile(self, u: torch.Tensor) -> torch.Tensor:
        u = u.double()
        if self.kind == "ts":
            return shift(self.alpha, u)
        if self.kind == "ln":
            return torch.sigmoid(self.loc + self.sigma * torch.special.ndtri(u))
        v = u * self.norm
        below = torch.sigmoid(self.loc + self.sigma * torch.special.ndtri(v.clamp(max=self.mass_before)))
        below = below.clamp(max=self.mode)
        above = (self.mode + (v - self.mass_before) / self.peak).clamp(self.mode, 1.0)
        return torch.where(v <= self.mass_before, below, above)

    def sample(self, n: int, generator: torch.Generator, stratified: bool = False) -> torch.Tensor:
        """n draws; `stratified` puts one draw in each of the n equal-probability strata (a
        lower-variance batch with the same distribution per element, in shuffled order)."""
        # open interval (0, 1), like the Rust sampler's open01
        u = (torch.randint(0, 1 << 52, (n,), generator=generator, dtype=torch.int64).double() + 0.5) / float(1 << 52)
        if stratified:
            u = (torch.randperm(n, generator=generator).double() + u) / n
        return self.quantile(u).float()

    def describe(self) -> str:
        if self.kind == "ts":
            return f"ts(alpha={self.alpha:g})"
        return f"{self.kind}(mu={self.mu:g}, sigma={self.sigma:g}, alpha={self.alpha:g})"
