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
        self.add_grads(*term_grads([ce, kd], self.params))

    def add_grads(self, gc: list[torch.Tensor], gk: list[torch.Tensor]) -> None:
        """One batch's gradients of the two terms (one tensor per parameter); the sums stay on the
        parameters' device until `moments` reads them (no host sync per batch)."""
        g = {"ce": [v.double() for v in gc], "kd": [v.double() for v in gk]}
        for name in TERMS:
            for acc, v in zip(self.sums[name], g[name], strict=True):
                acc += v
        dot = lambda a, b: sum((x * y).sum() for x, y in zip(a, b, strict=True))  # noqa: E731
        for key, (a, b) in {"cc": ("ce", "ce"), "kk": ("kd", "kd"), "ck": ("ce", "kd")}.items():
            self.sq[key] = self.sq[key] + dot(g[a], g[b])
        self.batches += 1

    def moments(self) -> dict[str, float]:
        """The five numbers every (a, b) needs: squared norms and cross product of the summed gradients
        and of the per-batch ones."""
        dot = lambda a, b: sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))  # noqa: E731
        c, k = self.sums["ce"], self.sums["kd"]
        sq = {k: float(v) for k, v in self.sq.items()}
        return {"CC": dot(c, c), "KK": dot(k, k), "CK": dot(c, k), **sq, "B": float(self.batches)}


def term_grads(terms: list[torch.Tensor], params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Each (scalar) term's gradient, one tensor per parameter (zeros where a term does not reach one)."""
    out = []
    for i, term in enumerate(terms):
        if term.requires_grad:
            last = i == len(terms) - 1
            grads = torch.autograd.grad(term, params, retain_graph=not last, allow_unused=True)
        else:
            grads = (None,) * len(params)
        out.append([z if z is not None else torch.zeros_like(p) for z, p in zip(grads, params, strict=True)])
    return out


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


# --- the per-coordinate fingerprint -----------------------------------------------------------------
#
# The squared norm above is dominated by the coordinates whose gradients are largest and noisiest (for
# an LM, the CE's one-hot rows of the embedding and head), where an objective's slip hides. An Adam-trained
# student is stationary coordinate by coordinate: each coordinate's mean gradient is small next to its
# own spread, whatever its scale. So the per-coordinate fingerprint averages each coordinate's squared
# t statistic over the batches,
#
#     S(a, b) = mean_j  mean_i(g_ij)^2 / (var_i(g_ij) / B),   g_ij = a * dCE_i/dθ_j + b * dKL_i/dθ_j,
#
# about 1 at a stationary point of a * CE + b * KL, larger for an objective the checkpoint is not still
# for. It needs each term's gradient per batch on each coordinate: kept for at most MAX_COORDS
# coordinates (a seeded random subset of a larger model's), so its memory is bounded.

MAX_COORDS = 2**17


class TermGradients:
    """Per batch, the gradient of each of n terms on a fixed subset of coordinates (every coordinate of
    a model with at most `max_coords` parameters): `G[batch, term, coordinate]`."""

    def __init__(self, params: list[torch.Tensor], max_coords: int = MAX_COORDS, seed: int = 0) -> None:
        total = sum(p.numel() for p in params)
        self.index = None
        if total > max_coords:
            pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_coords]
            self.index = pick.sort().values.to(params[0].device)
        self.rows: list[torch.Tensor] = []

    def add(self, grads: list[list[torch.Tensor]]) -> None:
        """One batch: per term, its gradient per parameter (`term_grads`)."""
        flat = [torch.cat([g.reshape(-1) for g in term]) for term in grads]
        if self.index is not None:
            flat = [f[self.index] for f in flat]
        self.rows.append(torch.stack(flat).float())

    def tensor(self) -> torch.Tensor:
        return torch.stack(self.rows)


def coord_stats(g: torch.Tensor, members: list[tuple[int, float, float]], whole: bool = False):
    """S(a, b) of each member (term index j, a, b: the objective a * term 0 + b * term j) over the
    batches of `g` [B, n, C], as a list; with `whole`, also each member's whole-vector `rho` on these
    coordinates. Coordinates no batch moves are left out of S."""
    b = g.shape[0]
    out, rhos = [], []
    by_term: dict[int, torch.Tensor] = {}
    for j, a, w in members:
        if j not in by_term:  # the sums over batches a member of term j needs: g0, gj, g0², gj², g0·gj
            g0, gj = g[:, 0].double(), g[:, j].double()
            by_term[j] = torch.stack([g0, gj, g0 * g0, gj * gj, g0 * gj], 1).sum(0)
        s0, sj, q00, qjj, q0j = by_term[j]
        mean = (a * s0 + w * sj) / b
        var = (a * a * q00 + w * w * qjj + 2 * a * w * q0j - b * mean * mean) / (b - 1)
        moved = var > 1e-30
        t2 = torch.where(moved, mean * mean / (var / b).clamp_min(1e-300), torch.zeros_like(mean))
        out.append(t2.sum() / moved.sum().clamp_min(1))
        if whole:  # rho() on these coordinates: |sum_i g_i|^2 against sum_i |g_i|^2
            total = ((a * s0 + w * sj) ** 2).sum()
            each = (a * a * q00 + w * w * qjj + 2 * a * w * q0j).sum()
            noise = (each - total / b).clamp_min(0) / (b - 1) / b
            rhos.append(torch.where(noise > 0, total / b**2 / noise, math.inf))
    out = torch.stack(out).tolist()  # one host read for every member
    return (out, torch.stack(rhos).tolist()) if whole else out
