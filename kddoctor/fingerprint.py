"""Which objective is a trained student stationary for? Its gradient fingerprint.

A student near the end of its training sits near a stationary point of the objective it was trained on,
on its own train data: the gradient of that objective, averaged over the train sample, is no larger
than the noise of a batch's gradient allows, while the gradients of other objectives are not.
Every KD objective here is a weighted sum of two per-unit terms (a CE per sample or counted token,
and a KL at temperature T per sample or counted token), `a * CE + b * KL_T`: the weights a user states,
T² or not, the reduction over samples, tokens or every element, alpha on one term or the other all map
to an (a, b) pair. So the gradient of each term on each batch of the train sample is enough: from
fixed-size sums (two parameter-sized vectors and three scalars) the fingerprint of any (a, b) is
computed in closed form,

    rho(a, b) = |mean_i g_i|^2 / (tr Cov(g_i) / B),   g_i = a * grad CE_i + b * grad KL_i,

the squared norm of the mean gradient over B batches in units of its own noise: about 1 for an objective
the checkpoint is stationary for, much larger for one it is not. Scale-free: objectives of any weight
compare. A student that every objective still moves (all rho large) is under-trained: inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

TERMS = ("ce", "kd")


class GradientSums:
    """Per batch: the gradients of the two terms; kept as their sums over batches and the batches'
    squared norms and cross products (fixed size: two vectors the size of the parameters)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.sums = {t: [torch.zeros_like(p, dtype=torch.float64) for p in params] for t in TERMS}
        self.sq = {"cc": 0.0, "kk": 0.0, "ck": 0.0}
        self.batches = 0

    def add(self, ce: torch.Tensor, kd: torch.Tensor) -> None:
        """One batch's two (scalar) terms, each a mean over the batch's units."""
        g = {}
        for name, term in (("ce", ce), ("kd", kd)):
            if term.requires_grad:
                grads = torch.autograd.grad(term, self.params, retain_graph=name == "ce", allow_unused=True)
            else:
                grads = (None,) * len(self.params)
            pairs = zip(grads, self.params, strict=True)
            g[name] = [(z if z is not None else torch.zeros_like(p)).double() for z, p in pairs]
        for name in TERMS:
            for acc, v in zip(self.sums[name], g[name], strict=True):
                acc += v
        dot = lambda a, b: sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))  # noqa: E731
        self.sq["cc"] += dot(g["ce"], g["ce"])
        self.sq["kk"] += dot(g["kd"], g["kd"])
        self.sq["ck"] += dot(g["ce"], g["kd"])
        self.batches += 1

    def moments(self) -> dict[str, float]:
        """The five numbers every (a, b) needs: squared norms and cross product of the summed gradients
        and of the per-batch ones."""
        dot = lambda a, b: sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))  # noqa: E731
        c, k = self.sums["ce"], self.sums["kd"]
        return {"CC": dot(c, c), "KK": dot(k, k), "CK": dot(c, k), **self.sq, "B": float(self.batches)}


def rho(m: dict[str, float], a: float, b: float) -> float:
    """|mean gradient|^2 over its noise for a * CE + b * KL (about 1: stationary; large: it moves)."""
    n = m["B"]
    total = a * a * m["CC"] + 2 * a * b * m["CK"] + b * b * m["KK"]  # |sum_i g_i|^2
    each = a * a * m["cc"] + 2 * a * b * m["ck"] + b * b * m["kk"]  # sum_i |g_i|^2
    mean_sq = total / n**2
    noise = max(each - total / n, 0.0) / (n - 1) / n if n > 1 else math.inf
    return mean_sq / noise if noise > 0 else math.inf


def stationary_ratio(m: dict[str, float]) -> float:
    """The KD-to-CE weight ratio r >= 0 whose objective CE + r * KL the checkpoint is most stationary
    for (a grid over 16 decades, refined; inf when KL alone is)."""
    grid = [0.0] + [10 ** (e / 8) for e in range(-64, 65)]
    best = min(grid, key=lambda r: rho(m, 1.0, r))
    if rho(m, 0.0, 1.0) < rho(m, 1.0, best):
        return math.inf
    return best


def fingerprint(
    model: nn.Module,
    batches: Iterable,
    terms: Callable[[nn.Module, object], tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, float]:
    """The moments of the two terms' gradients over `batches` (`terms(model, batch)` -> (CE, KL_T), each
    a mean over the batch's units, with grad), the model's trainable parameters, in eval mode."""
    params = [p for p in model.parameters() if p.requires_grad]
    sums = GradientSums(params)
    model.eval()
    with torch.enable_grad():
        for batch in batches:
            ce, kd = terms(model, batch)
            sums.add(ce, kd)
    return sums.moments()
