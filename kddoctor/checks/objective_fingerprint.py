"""Which objective did the student really train on? The gradient fingerprint (kddoctor.fingerprint) of
the checkpoint on its train sample, for the stated objective and a family of objectives around it:
the loss a user meant and the loss their code computed differ by a T², a reduction, the term alpha
weights, or one term gone, and the checkpoint is stationary for the one it was trained on."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch

from ..convention import KD_REDUCTIONS, LM_REDUCTIONS, KDConvention
from ..fingerprint import fingerprint, rho, stationary_ratio
from .base import Finding, Status, register_check

MOVING = 8.0  # rho above this for every objective: the checkpoint has not converged (inconclusive)
EXCESS_WARN, EXCESS_FAIL = 0.5, 0.7  # decades of rho the stated objective sits above the best one
STILL = 1.0  # rho at or below this (a mean gradient no larger than its noise) is stationary: none is stiller


def members(conv: KDConvention) -> list[tuple[str, KDConvention]]:
    """The stated objective and the objectives a slip in its code would compute instead."""
    out = [("as stated", conv)]
    only = {"form": "weights", "t2": conv.t2}
    out.append(("no KD term (CE alone)", replace(conv, ce_weight=1.0, kd_weight=0.0, **only)))
    out.append(("no CE term (KD alone)", replace(conv, ce_weight=0.0, kd_weight=1.0, **only)))
    if conv.ce_weight == 0:  # a trainer whose loss is one divergence: a fused path that added a CE (TRL 5731)
        out.append(
            ("a CE term beside the KD term (half each)", replace(conv, ce_weight=0.5, kd_weight=0.5, **only))
        )
    if conv.temperature != 1.0:
        words = "without T²" if conv.t2 else "with T²"
        out.append((f"the KD term {words}", replace(conv, t2=not conv.t2)))
    if conv.ce_weight != conv.kd_weight and conv.ce_weight > 0 and conv.kd_weight > 0:
        swapped = {"alpha_kd": "alpha_ce", "alpha_ce": "alpha_kd"}.get(conv.form, conv.form)
        words = "alpha on the other term" if conv.form != "weights" else "the two weights swapped"
        out.append((words, replace(conv, ce_weight=conv.kd_weight, kd_weight=conv.ce_weight, form=swapped)))
    reductions = LM_REDUCTIONS if conv.task == "causal-lm" else KD_REDUCTIONS
    for r in reductions:
        if r != conv.reduction and (r != "sum" or conv.train_batch_size):
            out.append((f"the KL reduced by '{r}'", replace(conv, reduction=r)))
    return out


def _assess(moments: dict, conv: KDConvention, n: int, moving: float = MOVING) -> dict:
    """Every member's rho, the best one, and how the stated one compares."""
    rows, seen = [], set()
    for name, m in members(conv):
        a, b = m.term_weights(n)
        if (round(a, 12), round(b, 12)) in seen:  # a slip that computes the stated loss is no other member
            continue
        seen.add((round(a, 12), round(b, 12)))
        row = {"name": name, "ce": a, "kd": b, "rho": rho(moments, a, b)}
        rows.append({**row, "code": m.code(), "formula": m.formula()})
    stated = rows[0]
    best = min(rows, key=lambda r: r["rho"])
    a, b = stated["ce"], stated["kd"]
    r_star = stationary_ratio(moments)
    r_stated = b / a if a > 0 else math.inf
    ratio = (
        0.0
        if r_star == r_stated
        else math.log10(r_star / r_stated)
        if 0 < r_star < math.inf and 0 < r_stated < math.inf
        else math.copysign(math.inf, (r_star if r_star != math.inf else 1e300) - r_stated)
    )
    gap = math.log10(max(stated["rho"], STILL) / max(best["rho"], STILL))
    inconclusive = best["rho"] > moving
    return {
        "members": {r["name"]: {k: r[k] for k in ("ce", "kd", "rho", "formula")} for r in rows},
        "stated_rho": stated["rho"],
        "best_member": best["name"],
        "best_rho": best["rho"],
        "best_code": best["code"],
        "best_formula": best["formula"],
        "stationary_kd_ratio": r_star,
        "stated_kd_ratio": r_stated,
        "log10_kd_ratio": ratio,
        "inconclusive": float(inconclusive),
        # what a cause reads: how much more the stated objective moves the checkpoint than the best one
        "stated_excess": 0.0 if inconclusive or best["name"] == "as stated" else gap,
        "all_moving": math.log10(max(best["rho"], 1e-9)),
        "batches": int(moments["B"]),
    }


def _finding(e: dict, size: str, warn: float = EXCESS_WARN, fail: float = EXCESS_FAIL) -> Finding:
    if e["inconclusive"]:
        status = Status.WARN
        words = (
            f"every objective still moves the checkpoint (the most stationary, {e['best_member']}, has a "
            f"mean gradient {math.sqrt(e['best_rho']):.1f}x its noise): it has not converged, so its "
            "fingerprint says nothing about which objective it trained on"
        )
    elif e["stated_excess"] >= fail:
        status = Status.FAIL
        words = (
            f"the checkpoint is stationary for the objective with {e['best_member']} (mean gradient "
            f"{math.sqrt(e['best_rho']):.1f}x its noise), not for the objective as stated "
            f"({math.sqrt(e['stated_rho']):.1f}x): the loss your code computed is not the one you stated"
        )
    else:
        status = Status.WARN if e["stated_excess"] >= warn else Status.PASS
        if e["best_member"] == "as stated":
            words = (
                f"the checkpoint is most stationary for the objective as stated (mean gradient "
                f"{math.sqrt(e['stated_rho']):.1f}x its noise, the stillest of {len(e['members'])} "
                "objectives)"
            )
        else:  # another member is stiller, but not by enough to say the code computed it
            words = (
                f"no objective stands out: the stillest of {len(e['members'])}, {e['best_member']}, has a "
                f"mean gradient {math.sqrt(e['best_rho']):.1f}x its noise and the objective as stated "
                f"{math.sqrt(e['stated_rho']):.1f}x, too close to tell which one the code computed"
            )
    return Finding("objective_fingerprint", status, f"on {size}: {words}", e)


def _model_copy(model: torch.nn.Module) -> torch.nn.Module:
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.requires_grad_(True)
    return out


@register_check(
    "objective_fingerprint",
    needs=("cache", "trainable"),
    title="Objective fingerprint",
    order=55,
    min_samples={"train": 64},
)
def image_fingerprint(
    ev, *, moving: float = MOVING, excess_warn: float = EXCESS_WARN, excess_fail: float = EXCESS_FAIL
) -> Finding:
    """Gradient fingerprint of the checkpoint on its cached train inputs (16 batches): which objective
    of the family around the stated one is it stationary for?

    moving: every objective's rho above this makes it inconclusive (not converged); excess_*: decades
    by which the stated objective's rho exceeds the most stationary one's."""
    from ._probes import cached, teacher_logits

    x, y = cached(ev, "train")
    t = teacher_logits(ev, "train")
    conv = ev.config.convention
    batches = [(x[i], t[i], y[i]) for i in torch.arange(len(x), device=x.device).chunk(16)]
    model = _model_copy(ev.student)

    def terms(m, b):
        from ..engine import as_logits

        xb, tb, yb = b
        return conv.unit_terms(as_logits(m(xb), ev.num_classes).float(), tb, yb)

    moments = fingerprint(model, [b for b in batches if len(b[0])], terms)
    e = _assess(moments, conv, ev.num_classes, moving)
    return _finding(e, f"{len(x)} train samples", excess_warn, excess_fail)


@register_check(
    "objective_fingerprint",
    task="causal-lm",
    needs=("probe_rows", "teacher_distribution"),
    title="Objective fingerprint",
    order=55,
)
def lm_fingerprint(
    ev, *, moving: float = MOVING, excess_warn: float = EXCESS_WARN, excess_fail: float = EXCESS_FAIL
) -> Finding:
    """Gradient fingerprint of the checkpoint on the probes' train rows (batches of 8 sequences): which
    objective of the family around the stated one is it stationary for? (Thresholds as for images.)"""
    pr = ev.probes
    ids, mask, labels = pr.rows["train"]
    conv = ev.convention
    model = _model_copy(pr.student)
    rows = torch.arange(len(ids), device=ids.device).split(8)

    def terms(m, r):
        s = pr._logits(m, ids[r], mask[r])
        return conv.unit_terms(s, pr._teacher("train", r), labels[r, 1:])

    moments = fingerprint(model, rows, terms)
    e = _assess(moments, conv, ev.vocab, moving)
    size = f"{pr.counted_tokens('train'):,} counted tokens of {len(ids)} train sequences"
    return _finding(e, size, excess_warn, excess_fail)
