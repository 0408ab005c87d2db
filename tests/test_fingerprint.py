"""The objective fingerprint on students whose training objective is known by construction: a linear
student fitted to convergence on one objective is stationary for it and for no other member."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kddoctor.checks.objective_fingerprint import _assess, members
from kddoctor.fingerprint import fingerprint, rho
from kddoctor.flags import resolve

N, D, C = 2048, 12, 6


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    y = (x @ torch.randn(D, C, generator=g) + 1.5 * torch.randn(N, C, generator=g)).argmax(1)
    t = x @ torch.randn(D, C, generator=g)  # a teacher that disagrees with the labels often
    return x, y, t


def _fit(conv, x, y, t, steps: int = 1500) -> nn.Module:
    """A linear student trained to convergence (full batch) on `conv`'s objective."""
    torch.manual_seed(0)
    model = nn.Linear(D, C)
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=steps, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = conv.loss(model(x), t, y)
        loss.backward()
        return loss

    opt.step(closure)
    return model


def _moments(model, conv, x, y, t):
    batches = [(x[i], t[i], y[i]) for i in torch.arange(N).chunk(16)]
    return fingerprint(model, batches, lambda m, b: conv.unit_terms(m(b[0]), b[1], b[2]))


@pytest.mark.parametrize(
    "trained, member",
    [
        ({"alpha": 0.5, "temperature": 2.0}, "as stated"),
        ({"alpha": 0.5, "temperature": 2.0, "no_t2": True}, "the KD term without T²"),
        ({"alpha": 0.5, "temperature": 2.0, "reduction": "mean"}, "the KL reduced by 'mean'"),
        ({"alpha": 0.8, "temperature": 2.0, "alpha_on": "ce"}, "alpha on the other term"),
    ],
)
def test_a_converged_student_is_stationary_for_the_objective_it_trained_on(trained, member):
    x, y, t = _data()
    stated = resolve(alpha=trained["alpha"], temperature=2.0)  # what the user meant
    model = _fit(resolve(**trained), x, y, t)
    e = _assess(_moments(model, stated, x, y, t), stated, C)
    assert e["best_member"] == member, {k: round(v["rho"], 2) for k, v in e["members"].items()}
    assert e["best_rho"] < 4.0 and not e["inconclusive"]
    if member == "as stated":
        assert e["stated_excess"] == 0.0
    else:  # the stated objective moves the checkpoint far beyond its noise
        assert e["stated_excess"] > 1.0 and e["stated_rho"] > 30


def test_a_ce_only_student_points_to_no_kd_term_and_a_random_one_is_inconclusive():
    x, y, t = _data(1)
    stated = resolve(alpha=0.5, temperature=2.0)
    ce_only = _fit(resolve(ce_weight=1.0, kd_weight=0.0, temperature=2.0), x, y, t)
    e = _assess(_moments(ce_only, stated, x, y, t), stated, C)
    assert e["best_member"] == "no KD term (CE alone)" and e["stated_excess"] > 1.0
    torch.manual_seed(3)
    untrained = nn.Linear(D, C)
    e = _assess(_moments(untrained, stated, x, y, t), stated, C)
    assert e["inconclusive"] and e["stated_excess"] == 0.0 and e["all_moving"] > math.log10(8)


def test_rho_is_scale_free_and_about_one_for_pure_noise():
    g = torch.Generator().manual_seed(0)
    m = {"CC": 0.0, "KK": 0.0, "CK": 0.0, "cc": 0.0, "kk": 0.0, "ck": 0.0, "B": 64.0}
    total = torch.zeros(50, dtype=torch.float64)
    for _ in range(64):
        gc, gk = (
            torch.randn(50, generator=g, dtype=torch.float64),
            torch.randn(50, generator=g, dtype=torch.float64),
        )
        total += gc
        m["cc"] += float(gc @ gc)
        m["kk"] += float(gk @ gk)
        m["ck"] += float(gc @ gk)
    m["CC"] = float(total @ total)
    assert 0.5 < rho(m, 1.0, 0.0) < 2.0
    assert rho(m, 3.0, 0.0) == pytest.approx(rho(m, 1.0, 0.0))  # the weight's scale cancels


def test_the_family_covers_the_slips_users_make():
    names = [n for n, _ in members(resolve(alpha=0.7, temperature=4.0))]
    assert names == [
        "as stated",
        "no KD term (CE alone)",
        "no CE term (KD alone)",
        "the KD term without T²",
        "alpha on the other term",
        "the KL reduced by 'mean'",
    ]
    lm = [n for n, _ in members(resolve(alpha=0.5, temperature=2.0, task="causal-lm"))]
    assert "the KL reduced by 'batchmean'" in lm and "the KL reduced by 'mean'" in lm
