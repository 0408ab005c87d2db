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
from ..convention_text import python_code
from ..fingerprint import (
    GradientSums,
    TermGradients,
    coord_stats,
    fingerprint,
    rho,
    stationary_ratio,
    term_grads,
)
from ..losses import divergence_word, token_kd_mean
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
    term = divergence_word(conv.divergence)  # as stated
    for r in reductions:
        if r != conv.reduction and (r != "sum" or conv.train_batch_size):
            out.append((f"the {term} reduced by '{r}'", replace(conv, reduction=r)))
    return out


def _texts(m: KDConvention, conv: KDConvention) -> dict:
    """A member written in the user's own form, in PyTorch, and as a formula that says what it changes
    beyond the weights (T², the reduction, the target) against the stated `conv`."""
    formula = m.formula()
    if m.t2 != conv.t2:
        formula += f", KD {'with' if m.t2 else 'without'} T²"
    if m.reduction != conv.reduction:
        formula += f", KD reduced by '{m.reduction}'"
    if (m.top_k, m.top_k_rule) != (conv.top_k, conv.top_k_rule) and m.top_k:
        formula += f", KD on the teacher's top {m.top_k} ({m.top_k_rule})"
    return {"code": m.code(), "python": python_code(m), "formula": formula}


def _assess(moments: dict, conv: KDConvention, n: int, moving: float = MOVING) -> dict:
    """Every member's rho, the best one, and how the stated one compares."""
    rows, seen = [], set()
    for name, m in members(conv):
        a, b = m.term_weights(n)
        if (round(a, 12), round(b, 12)) in seen:  # a slip that computes the stated loss is no other member
            continue
        seen.add((round(a, 12), round(b, 12)))
        row = {"name": name, "ce": a, "kd": b, "rho": rho(moments, a, b)}
        rows.append({**row, **_texts(m, conv)})
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
        "best_python": best["python"],
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


# --- causal LMs: the per-coordinate fingerprint (kddoctor.fingerprint.coord_stats) ---------------------
#
# The thresholds were set on the tuning draw of the Hugging Face LM zoo (bench/lm_zoo.py, draw 0): the
# stated objective's S over the stillest candidate's, in decades, is at most 0.054 for every healthy and
# fixed pair and 0.095-0.78 for nine of the ten students whose code computed another objective.
COORD_WARN, COORD_FAIL = 0.05, 0.10
COORD_MOVING = 1.7  # log10 of the stillest S: above it every objective moves every coordinate
AGREE = 1.25  # a candidate's whole-vector rho is at most this times the stated one's
TIE = 0.1  # members whose S is within 10% of the named one's are named beside it
SHIFT_MIN = 0.5  # decades the stillest KD-to-CE ratio must sit from the stated one to count on its own
TOPK_LADDER = (2, 8, 32, 128)  # a top-k target the code may have cut without saying so
SCAN = [10 ** (e / 8) for e in range(-48, 49)]  # KD-to-CE weight ratios, 1e-6 to 1e6
DRAWS, SUBSET, INTERVAL_COORDS = 16, 0.75, 2**14  # the interval: draws of 3/4 of the batches
EDGE = 6.0  # a ratio shift past the scan's ends (CE alone or KD alone is stillest), in decades


def _targets(conv: KDConvention, vocab: int) -> list[tuple[str, KDConvention]]:
    """The KD targets beside the stated one whose gradients the fingerprint takes: the teacher's top k
    (renormalized) where the stated target is the whole distribution."""
    if conv.top_k:  # what a top-k target drops is lm_topk's to measure: the two targets differ by a tail
        return []  # whose gradient the batches cannot tell from noise (bytes zoo: healthy DistillKit pairs)
    if conv.divergence != "forward_kl":  # a top-k target is a forward KL's (DistillKit, verl)
        return []
    cut = "the KD target cut to the teacher's top {}, renormalized"
    kept = [k for k in TOPK_LADDER if k < vocab]
    return [(cut.format(k), replace(conv, top_k=k, top_k_rule="renormalize")) for k in kept]


def lm_terms(conv: KDConvention, targets: list, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> list:
    """The fingerprint's terms on one batch, each per counted token: the CE, the stated KD term, and
    the KD term on each of `targets`' targets."""
    return [*conv.unit_terms(s, t, y), *(token_kd_mean(m, s, t, y) for _, m in targets)]


def _log_ratio(a: float, b: float) -> float:
    """log10(b / a), the KD-to-CE weight ratio's position, clipped to the scan's ends (+-EDGE + 1)."""
    if a <= 0:
        return EDGE + 1
    if b <= 0:
        return -EDGE - 1
    return max(-EDGE - 1, min(EDGE + 1, math.log10(b / a)))


def _assess_coords(g: torch.Tensor, conv: KDConvention, vocab: int, targets: list) -> dict:
    """The per-coordinate fingerprint of every member (term 1: the stated target; 2..: `targets`), the
    KD-to-CE ratio the checkpoint is stillest for, and how far the stated objective sits from both."""
    rows, seen = [], set()
    for name, m in members(conv):
        a, b = m.term_weights(vocab)
        if (round(a, 12), round(b, 12)) not in seen:
            seen.add((round(a, 12), round(b, 12)))
            rows.append({"name": name, "term": 1, "ce": a, "kd": b, **_texts(m, conv)})
    a0, b0 = conv.term_weights(vocab)
    for j, (name, m) in enumerate(targets, start=2):
        rows.append({"name": name, "term": j, "ce": a0, "kd": b0, **_texts(m, conv)})
    scan = [(1, 1.0, r) for r in SCAN] + [(1, 1.0, 0.0), (1, 0.0, 1.0)]
    spec = [(r["term"], r["ce"], r["kd"]) for r in rows]
    point, whole = coord_stats(g, spec + scan, whole=True)
    for r, v, w in zip(rows, point, whole, strict=False):
        r["S"], r["rho"] = v, w
    # an objective is a candidate only where the whole-vector reading agrees it is about as still as the
    # stated one (rho within AGREE of it): where the two readings disagree, the per-coordinate one is
    # reading which objective's gradients are noisiest, not which one the checkpoint settled on (bytes
    # zoo, T 0.5: KD alone reads stillest per coordinate, 2.9x the stated rho as a whole)
    limit = rows[0]["rho"] * AGREE
    cand = [i for i, r in enumerate(rows) if i == 0 or r["rho"] <= limit]
    scan_ok = [i for i, w in enumerate(whole[len(rows) :]) if w <= limit]
    stated_at = _log_ratio(a0, b0)

    def reading(stats: list[float]) -> tuple[dict, list[dict], int, float]:
        """The excess, the candidates with their S, the scan's stillest index and its ratio shift."""
        members_s = [{**rows[i], "S": stats[i]} for i in cand]
        scan_s = stats[len(rows) :]
        k = min(scan_ok or range(len(scan_s)), key=scan_s.__getitem__)
        shift = max(-EDGE, min(EDGE, _log_ratio(1.0, (SCAN + [0.0, math.inf])[k]) - stated_at))
        return _excess(members_s, scan_s[k] if scan_ok else stats[0], shift), members_s, k, shift

    e, members_s, k, shift = reading(point)
    named = _named(members_s, e, stated_at, shift)
    nothing = named is members_s[0]  # no candidate to name (none on the scan minimum's side)
    if nothing:
        e["objective_excess"] = 0.0
    # the interval: the same reading on draws of SUBSET of the batches (without replacement), each on
    # a seeded subset of at most INTERVAL_COORDS coordinates
    boot = []
    gen = torch.Generator().manual_seed(0)
    sub_g = g[:, :, torch.randperm(g.shape[2], generator=gen)[:INTERVAL_COORDS].to(g.device)]
    for _ in range(DRAWS):
        keep = torch.randperm(g.shape[0], generator=gen)[: max(3, round(g.shape[0] * SUBSET))]
        part = coord_stats(sub_g[keep.to(g.device)], spec + scan)
        # a statistic's excess over 1 grows with the batches it reads: scaled back to all of them
        boot.append(reading([1 + (v - 1) * g.shape[0] / len(keep) for v in part])[0]["objective_excess"])
    # centred on the point reading: the draws' spread below and above their median
    q = torch.tensor(boot, dtype=torch.float64).quantile(torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    lo, hi = max(0.0, e["objective_excess"] - float(q[1] - q[0])), e["objective_excess"] + float(q[2] - q[1])
    if nothing:
        lo = hi = 0.0
    scan_min = point[len(rows) + k]
    ties = [r for r in members_s[1:] if r is not named and r["S"] <= named["S"] * (1 + TIE)]
    return {
        "coord_members": {r["name"]: round(r["S"], 4) for r in rows},
        # every objective, top-k targets included, still moves it as a whole: not converged (as for images)
        "best_rho": min(r["rho"] for r in rows),
        "coord_stated": rows[0]["S"],
        "coord_best_member": min(rows, key=lambda r: r["S"])["name"],
        "coord_scan_min": scan_min,
        # no objective is still coordinate by coordinate (every healthy and planted-objective pair of the
        # tuning draw: at most 18; a student far too small for its teacher: 83-304): inconclusive
        "coord_all_moving": math.log10(max(min(scan_min, *(r["S"] for r in rows)), 1e-9)),
        "coord_ratio_shift": shift,
        **e,
        "objective_excess_lo": lo,
        "objective_excess_hi": hi,
        "named_member": named["name"],
        # members within TIE of the named one's S: the fingerprint cannot tell them apart
        "named_ties": [r["name"] for r in ties],
        "named_ties_code": [r["code"] for r in ties],
        "candidates": len(cand),
        "named_code": named["code"],
        "named_python": named["python"],
        "named_formula": named["formula"],
        "coordinates": g.shape[2],
    }


def _excess(rows: list[dict], scan_min: float, shift: float) -> dict:
    """How much stiller than the stated objective the checkpoint is for another: the best member's S,
    or the scan's minimum where it sits at least SHIFT_MIN decades of KD-to-CE ratio away (decades)."""
    stated = max(rows[0]["S"], 1e-12)
    best = min(r["S"] for r in rows)
    member = math.log10(stated / max(best, 1e-12))
    off = math.log10(stated / max(scan_min, 1e-12)) if abs(shift) >= SHIFT_MIN else 0.0
    return {"coord_excess": member, "coord_scan_excess": off, "objective_excess": max(member, off, 0.0)}


def _named(rows: list[dict], e: dict, stated_at: float, shift: float) -> dict:
    """The member the fingerprint names: the stillest one; where the stated one is stillest of the
    members but the scan's minimum lies SHIFT_MIN decades away, the stillest member on that side."""
    best = min(rows, key=lambda r: r["S"])
    if best is not rows[0] or e["coord_scan_excess"] <= 0:
        return best
    side = [r for r in rows[1:] if r["term"] == 1 and (_log_ratio(r["ce"], r["kd"]) - stated_at) * shift > 0]
    return min(side, key=lambda r: r["S"]) if side else best


def _lm_finding(e: dict, size: str, warn: float, fail: float) -> Finding:
    ex, named = e["objective_excess"], e["named_member"]
    if e["named_ties"]:
        named += f" (or, as still, {' or '.join(e['named_ties'])})"
    lo, hi = e["objective_excess_lo"], e["objective_excess_hi"]
    interval = f"{lo:.2f}-{hi:.2f} over draws of 3/4 of the batches"
    if ex >= fail:
        status = Status.FAIL
        words = (
            f"the checkpoint is stiller for the objective with {named} than for the objective as stated: "
            f"the stated one's coordinates move {10**ex:.2f}x as much against their noise ({ex:.2f} decades, "
            f"{interval}): the loss your code computed is not the one you stated"
        )
    elif ex >= warn:
        status = Status.WARN
        words = (
            f"the checkpoint may be stiller for the objective with {named} than for the objective as stated "
            f"({ex:.2f} decades, {interval}): too close to say the code computed it"
        )
    else:
        status = Status.PASS
        words = (
            f"the checkpoint is as still for the objective as stated as for any of "
            f"{len(e['coord_members'])} objectives around it ({ex:.2f} decades from the stillest, {interval})"
        )
    # what the remedy reads: this check names another objective than the stated one
    e["named"] = float(ex >= fail and e["coord_all_moving"] < COORD_MOVING)
    if e["coord_all_moving"] >= COORD_MOVING:
        status = Status.WARN if status == Status.FAIL else status
        stillest = 10 ** e["coord_all_moving"]
        words += (
            f"; but no objective is still coordinate by coordinate (the stillest reads {stillest:.0f}, where "
            "a converged student reads a few): which objective it trained on is not told"
        )
    elif e["inconclusive"]:
        status = Status.WARN if status == Status.FAIL else status
        words += (
            "; every objective still moves it as a whole (the most stationary one's mean gradient is "
            f"{math.sqrt(e['best_rho']):.1f}x its noise): it has not converged"
        )
    return Finding("objective_fingerprint", status, f"on {size}: {words}", e)


@register_check(
    "objective_fingerprint",
    task="causal-lm",
    needs=("probe_rows", "teacher_distribution"),
    title="Objective fingerprint",
    order=55,
)
def lm_fingerprint(
    ev, *, moving: float = MOVING, excess_warn: float = COORD_WARN, excess_fail: float = COORD_FAIL
) -> Finding:
    """Gradient fingerprint of the checkpoint on the probes' train rows (batches of 8 sequences): which
    objective of the family around the stated one, top-k targets included, is it stationary for, read
    coordinate by coordinate (as Adam trains). excess_*: decades by which the stated objective's
    per-coordinate statistic exceeds the stillest one's; moving: as for images (the whole-vector rho)."""
    pr = ev.probes
    ids, mask, labels = pr.rows["train"]
    conv = ev.convention
    model = _model_copy(pr.student)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    targets = _targets(conv, ev.vocab)
    sums, coords = GradientSums(params), TermGradients(params, seed=pr.seed)
    with torch.enable_grad():
        for r in torch.arange(len(ids), device=ids.device).split(8):
            s, t, y = pr._logits(model, ids[r], mask[r]), pr._teacher("train", r), labels[r, 1:]
            grads = term_grads(lm_terms(conv, targets, s, t, y), params)
            sums.add_grads(grads[0], grads[1])
            coords.add(grads)
    e = _assess(sums.moments(), conv, ev.vocab, moving)
    # the whole-vector reading stays as evidence (its `all_moving` says a student has not converged); the
    # member the per-coordinate reading names is the one a cause and the remedy show
    e = {f"scalar_{k}" if k.startswith("best_") else k: v for k, v in e.items()}
    e |= _assess_coords(coords.tensor(), conv, ev.vocab, targets)
    e |= {f"best_{k}": e[f"named_{k}"] for k in ("member", "code", "python", "formula")}
    if e["named_ties"]:  # a cause and its remedy name every member the fingerprint cannot tell apart
        e["best_member"] += f" (or, as still, {' or '.join(e['named_ties'])})"
    e["all_moving"] = math.log10(max(e["best_rho"], 1e-9))
    e["inconclusive"] = float(e["best_rho"] > moving)
    size = f"{pr.counted_tokens('train'):,} counted tokens of {len(ids)} train sequences"
    return _lm_finding(e, size, excess_warn, excess_fail)
