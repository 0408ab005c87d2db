"""The objective fingerprint on students whose training objective is known by construction: a linear
student fitted to convergence on one objective is stationary for it and for no other member."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from kddoctor.checks.objective_fingerprint import _assess, _texts, members
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
    gkd = [n for n, _ in members(resolve(preset="trl-gkd", task="causal-lm"))]
    assert "the JSD reduced by 'batchmean'" in gkd  # the stated divergence, by its name


# --- causal LMs: the per-coordinate fingerprint ----------------------------------------------------------

V, L, ROWS = 24, 24, 128


class _Bigram(nn.Module):
    """A low-rank bigram LM: too small to fit both the labels and its teacher, so the two terms pull apart."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(V, 5), nn.Linear(5, V)

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)))


def _lm_data():
    g = torch.Generator().manual_seed(0)
    chain = torch.randn(V, V, generator=g) * 2  # the text's bigram logits
    ids = torch.zeros(ROWS, L + 1, dtype=torch.long)
    ids[:, 0] = torch.randint(V, (ROWS,), generator=g)
    for i in range(L):
        ids[:, i + 1] = torch.multinomial(chain[ids[:, i]].softmax(-1), 1, generator=g).squeeze(1)
    teacher = chain + torch.randn(V, V, generator=g) * 1.5  # a teacher that disagrees with the text often
    x, y = ids[:, :-1], ids[:, 1:]
    return x, y, teacher[x]


def _lm_fit(objective, x, y, t, steps: int = 800) -> nn.Module:
    """Adam on every row at once, its step size annealed to zero: a stationary point of `objective`."""
    torch.manual_seed(0)
    model = _Bigram()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    a, b = objective.term_weights(V)
    for _ in range(steps):
        opt.zero_grad()
        ce, kd = objective.unit_terms(model(x), t, y)
        (a * ce + b * kd).backward()
        opt.step()
        sched.step()
    return model


def _lm_assess(model, stated, x, y, t):
    from kddoctor.checks.objective_fingerprint import _assess_coords, _targets, lm_terms
    from kddoctor.fingerprint import TermGradients, term_grads

    params = list(model.parameters())
    targets = _targets(stated, V)
    grads = TermGradients(params)
    for r in torch.arange(ROWS).split(8):
        s = model(x[r])
        grads.add(term_grads(lm_terms(stated, targets, s, t[r], y[r]), params))
    return _assess_coords(grads.tensor(), stated, V, targets)


STATED = {"alpha": 0.5, "temperature": 2.0, "task": "causal-lm"}


@pytest.mark.parametrize(
    "trained, named",
    [
        ({}, "as stated"),
        ({"no_t2": True}, "the KD term without T²"),
        ({"alpha": 0.9, "alpha_on": "ce"}, "alpha on the other term"),
        ({"top_k": 2}, "the KD target cut to the teacher's top 2, renormalized"),
    ],
)
def test_an_lm_checkpoint_is_stillest_coordinate_by_coordinate_for_what_it_trained_on(trained, named):
    x, y, t = _lm_data()
    stated = resolve(**{**STATED, "alpha": 0.9} if "alpha_on" in trained else STATED)
    model = _lm_fit(resolve(**{**STATED, **trained}), x, y, t)
    e = _lm_assess(model, stated, x, y, t)
    assert e["named_member"] == named, e["coord_members"]
    if named == "as stated":  # calm: no other objective is stiller than the stated one
        assert e["objective_excess"] < 0.05, e
    else:
        assert e["objective_excess"] > 0.3, e
        assert e["objective_excess_lo"] > 0.1, e


def test_an_lm_student_no_objective_holds_still_is_inconclusive():
    """A student at its initialization moves under every objective: the check names no objective (it
    warns, it does not fail) and says it has not converged; coordinate by coordinate, likewise."""
    from kddoctor.checks.base import Status
    from kddoctor.checks.objective_fingerprint import COORD_MOVING, MOVING, _lm_finding

    x, y, t = _lm_data()
    torch.manual_seed(0)
    e = _lm_assess(_Bigram(), resolve(**STATED), x, y, t)
    assert e["best_rho"] > MOVING and e["objective_excess"] > 0.10, e  # CE alone is stillest, yet...
    f = _lm_finding({**e, "inconclusive": 1.0}, "rows", 0.05, 0.10)
    assert f.status == Status.WARN and "it has not converged" in f.summary
    f = _lm_finding({**e, "inconclusive": 0.0, "coord_all_moving": COORD_MOVING}, "rows", 0.05, 0.10)
    assert f.status == Status.WARN and "no objective is still coordinate by coordinate" in f.summary


def test_an_lm_objective_of_another_divergence_is_read_without_top_k_targets():
    """A top-k target is a forward KL's: a JSD or reverse-KL objective's family has none, and its
    fingerprint is read all the same (a refused top-k convention once made the check fail)."""
    from kddoctor.checks.objective_fingerprint import _targets

    x, y, t = _lm_data()
    for kind in ("jsd", "reverse_kl"):
        stated = resolve(**STATED, divergence=kind)
        assert _targets(stated, V) == []
        e = _lm_assess(_lm_fit(stated, x, y, t, steps=300), stated, x, y, t)
        assert e["named_member"] == "as stated" and e["objective_excess"] < 0.05, e["coord_members"]
    assert len(_targets(resolve(**STATED), V)) == 2  # the top 2 and 8 of 24 ids: those under the vocabulary


def test_a_members_formula_says_what_it_changes_beyond_the_weights():
    """The members that differ from the stated objective only in T², the reduction or the target read
    as different formulas in results.json (they all read the stated weights' formula)."""
    conv = resolve(task="causal-lm", alpha=0.5, temperature=2.0)
    formulas = [_texts(m, conv)["formula"] for _, m in members(conv)]
    assert len(set(formulas)) == len(formulas), formulas
    assert _texts(replace(conv, reduction="mean"), conv)["formula"].endswith("KD reduced by 'mean'")
    assert _texts(replace(conv, t2=False), conv)["formula"].endswith("KD without T²")
