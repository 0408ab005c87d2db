"""The KD term as the training code reduced it, written once (the weighting lives in convention.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100  # the label Hugging Face collators give masked (pad, prompt) tokens
KD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def kd_term(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    temperature: float,
    *,
    t2: bool = True,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), reduced as the training code did, times T² unless told not."""
    log_p_s = F.log_softmax(s_logits / temperature, dim=1)
    log_p_t = F.log_softmax(t_logits / temperature, dim=1)
    # Written out rather than F.kl_div(reduction=...): torch plans to change what 'mean' means, and we
    # must reproduce what the user's code did ('mean' divides by batch * classes).
    total = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    divisor = {
        "batchmean": s_logits.shape[0],
        "token": s_logits.shape[0],
        "mean": s_logits.numel(),
        "sum": 1,
    }[reduction]
    kl = total / divisor
    return kl * temperature**2 if t2 else kl


def token_kl(
    s: torch.Tensor,
    t: torch.Tensor,
    temperature: float,
    dtype: str | torch.dtype = "float32",
    top_k: int | None = None,
) -> torch.Tensor:
    """Per-token KL(t||s) over the last dimension at a temperature, every op in `dtype` (what a KD loss
    computes there); `top_k`: the teacher's target kept only its top k logits, renormalized (xlogy, so
    the dropped rows give 0 log 0 = 0, not NaN)."""
    dt = KD_DTYPES[dtype] if isinstance(dtype, str) else dtype
    if not top_k:
        s, t = s.to(dt) / temperature, t.to(dt) / temperature
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    kth = t.topk(top_k, -1).values[..., -1:]
    p = F.softmax(t.masked_fill(t < kth, float("-inf")).to(dt) / temperature, -1)
    return (torch.xlogy(p, p) - p * F.log_softmax(s.to(dt) / temperature, -1)).sum(-1)


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv")
DIVERGENCE_NAMES = {  # as a report says them
    "forward_kl": "forward KL",
    "reverse_kl": "reverse KL",
    "jsd": "JSD",
    "skew_forward_kl": "skew forward KL",
    "skew_reverse_kl": "skew reverse KL",
    "tv": "TV distance",
}


def log_prob_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, from two log-probability tensors."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def divergence_word(kind: str) -> str:
    """A stated divergence as a sentence names it: "KL" for the forward KL, else its report name."""
    return "KL" if kind == "forward_kl" else DIVERGENCE_NAMES.get(kind, kind.replace("_", " "))


TOP_K_RULES = (
    "renormalize",
    "tail",
    "none",
    "tail_at_t",
    "renormalize_both",
)  # a top-k target's missing mass: renormalized, one bucket, dropped; TRL's server path's two (below)
# TRL's ServerDistillationTrainer builds both sides on the teacher's support: with loss_add_tail, one
# bucket each holding the mass outside it at T; without, both renormalized over it
SUPPORT_RULES = ("tail_at_t", "renormalize_both")


def effective_divergence(kind: str, beta: float | None) -> str:
    """A generalized JSD at its ends is a KL: beta 0 the forward one, 1 the reverse."""
    if kind == "jsd" and beta in (0.0, 1.0):
        return "forward_kl" if beta == 0.0 else "reverse_kl"
    return kind


def token_divergence(
    s: torch.Tensor,
    t: torch.Tensor,
    temperature: float,
    dtype: str | torch.dtype = "float32",
    top_k: int | None = None,
    kind: str = "forward_kl",
    beta: float | None = None,
    rule: str = "renormalize",
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token divergence between teacher (p) and student (q) at a temperature, every op in `dtype`:
    forward_kl KL(p||q); reverse_kl KL(q||p); jsd (TRL's generalized JSD: beta 0 forward KL, 1 reverse
    KL, else beta*KL(p||M) + (1-beta)*KL(q||M), M = beta*p + (1-beta)*q); skew_forward_kl KL(p||M),
    M = beta*p + (1-beta)*q, and skew_reverse_kl KL(q||M), M = (1-beta)*p + beta*q (DistiLLM, beta its
    skew alpha); tv, half the L1 distance. A top-k target (forward KL) keeps the teacher's top k ids and
    handles the rest by `rule`: renormalize the kept mass (DistillKit ZERO), add one tail bucket
    P log(P/Q) (DistillKit SYMMETRIC_UNIFORM, `tail_target`; Q the student's mass outside the kept ids at
    T), or drop it ('none'). The `SUPPORT_RULES` are TRL's server path (`support_divergence`; `y`, the
    text's next tokens, for its top-1 support of a mixed or reverse divergence)."""
    kind = effective_divergence(kind, beta)
    if top_k and rule in SUPPORT_RULES:
        dt = KD_DTYPES[dtype] if isinstance(dtype, str) else dtype
        log_q = F.log_softmax(s.to(dt) / temperature, -1)
        log_p = F.log_softmax(t.to(dt) / temperature, -1)
        return support_divergence(log_q, log_p, t, top_k, kind, beta, rule == "tail_at_t", y)
    if kind == "forward_kl" and (not top_k or rule == "renormalize"):
        return token_kl(s, t, temperature, dtype, top_k)
    dt = KD_DTYPES[dtype] if isinstance(dtype, str) else dtype
    log_q = F.log_softmax(s.to(dt) / temperature, -1)
    log_p = F.log_softmax(t.to(dt) / temperature, -1)
    if top_k:
        idx = t.topk(top_k, -1).indices
        lq = log_q.gather(-1, idx)
        if rule == "none":
            return log_prob_kl(log_p.gather(-1, idx), lq)
        lp, p_tail = tail_target(F.log_softmax(t.to(dt), -1).gather(-1, idx), temperature)
        q_tail = (1 - lq.exp().sum(-1)).clamp_min(torch.finfo(dt).tiny)
        return log_prob_kl(lp, lq) + torch.xlogy(p_tail, p_tail) - p_tail * q_tail.log()
    if kind == "reverse_kl":
        return log_prob_kl(log_q, log_p)
    if kind == "tv":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    b = 0.5 if beta is None else beta
    if kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p + math.log(b), log_q + math.log1p(-b)]), 0)
        return b * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - b) * (log_q.exp() * (log_q - log_m)).sum(-1)
    if kind == "skew_forward_kl":
        log_m = torch.logsumexp(torch.stack([log_p + math.log(b), log_q + math.log1p(-b)]), 0)
        return (log_p.exp() * (log_p - log_m)).sum(-1)
    if kind == "skew_reverse_kl":
        log_m = torch.logsumexp(torch.stack([log_p + math.log1p(-b), log_q + math.log(b)]), 0)
        return (log_q.exp() * (log_q - log_m)).sum(-1)
    raise ValueError(f"no divergence {kind!r}")


def support_divergence(
    log_q: torch.Tensor,
    log_p: torch.Tensor,
    t: torch.Tensor,
    top_k: int,
    kind: str,
    beta: float | None,
    tail: bool,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """The divergence on a sparse support as TRL's ServerDistillationTrainer computes it
    (huggingface/trl@f2cd577 trl/experimental/server_distillation/server_distillation_trainer.py): the
    forward KL (beta 0) on the teacher's top-k ids (:503-545); a mixed JSD on top-1 support, the
    teacher's top token and the text's own (`y`; its 'sampled' mode, deduplicated), or the reverse KL
    (beta 1) on the text's token alone (:197-242). Each side's log-probabilities at T on the support,
    then with `tail` one more class holding each side's mass outside it (`_add_tail_bucket`, :71-81),
    else each renormalized over it (a one-class support then gives 0); masked slots count 0
    (`_jsd_divergence`, :27-68)."""
    if kind == "forward_kl":
        idx = t.topk(top_k, -1).indices
        keep = torch.ones_like(idx, dtype=torch.bool)
    else:
        if y is None:
            raise ValueError("a top-1 support with the text's token needs the labels (y)")
        text = y.clamp_min(0).unsqueeze(-1)
        if kind == "reverse_kl":
            idx = text
            keep = torch.ones_like(idx, dtype=torch.bool)
        else:
            top = t.argmax(-1, keepdim=True)
            idx = torch.cat([top, text], -1)
            keep = torch.cat([torch.ones_like(top, dtype=torch.bool), text != top], -1)
    lq = log_q.gather(-1, idx).masked_fill(~keep, float("-inf"))
    lp = log_p.gather(-1, idx).masked_fill(~keep, float("-inf"))
    if tail:
        lq, lp = _with_tail(lq), _with_tail(lp)
        keep = torch.cat([keep, torch.ones_like(keep[..., :1])], -1)
    else:
        lq = lq - lq.logsumexp(-1, keepdim=True)
        lp = lp - lp.logsumexp(-1, keepdim=True)
    zero = torch.zeros((), dtype=lq.dtype, device=lq.device)
    sl, tl = torch.where(keep, lq, zero), torch.where(keep, lp, zero)
    q, p = torch.where(keep, lq.exp(), zero), torch.where(keep, lp.exp(), zero)
    if kind == "forward_kl":
        per = p * (tl - sl)
    elif kind == "reverse_kl":
        per = q * (sl - tl)
    elif kind == "jsd":
        b = 0.5 if beta is None else beta
        m = torch.where(keep, ((1 - b) * q + b * p).clamp_min(torch.finfo(q.dtype).tiny).log(), zero)
        per = b * p * (tl - m) + (1 - b) * q * (sl - m)
    else:
        raise ValueError(f"TRL's sparse support computes a forward or reverse KL or a JSD, not {kind!r}")
    return torch.nan_to_num(per, nan=0.0).sum(-1)


def _with_tail(lp: torch.Tensor) -> torch.Tensor:
    """One more class, log(1 - the mass already there), the sum held under 1 (TRL's clamp at -1e-7)."""
    total = lp.logsumexp(-1, keepdim=True).clamp(max=-1e-7)
    return torch.cat([lp, torch.log(-torch.expm1(total))], -1)


def tail_target(lp1: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A top-k target with its missing mass as one tail bucket, as DistillKit's SYMMETRIC_UNIFORM builds
    it (arcee-ai/DistillKit@a61c2e7 distillkit/lossfuncs/common.py:14-66, get_target_logprobs): from the
    teacher's top-k log-probabilities at T 1 (`lp1`, what a capture stores) and the mass they leave, each
    kept p and the bucket's mass are raised to 1/T as k + 1 classes and normalized together. Returns the
    kept ids' log-probabilities and the bucket's probability. At T 1 it is the teacher's own
    distribution; at T > 1 the bucket stays one class (sum of the missing p, then ^1/T), not the sum of
    every missing p^(1/T) that a softmax of the full logits at T would give it."""
    rest = (1 - lp1.exp().sum(-1)).clamp_min(0).log() / temperature
    a = lp1 / temperature
    z = torch.logaddexp(torch.logsumexp(a, -1), rest)
    return a - z.unsqueeze(-1), (rest - z).exp()


def objective_divergence(
    conv, s: torch.Tensor, t: torch.Tensor, dtype=None, y: torch.Tensor | None = None
) -> torch.Tensor:
    """The per-token KD divergence a convention states (its kind, beta, top-k rule, dtype); `y`, the
    labels aligned with the logits, for a support that holds the text's token."""
    return token_divergence(
        s,
        t,
        conv.temperature,
        dtype or conv.kd_dtype,
        conv.top_k,
        conv.divergence,
        conv.beta,
        conv.top_k_rule,
        y,
    )


def batch_terms(conv, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple:
    """(weighted KD term, weighted CE term) on one batch; `sum` scaled to the stated training batch."""
    kd_w = 1.0 if conv.bare_kl else conv.kd_weight
    kd = ce = s.new_zeros(())
    if kd_w:
        if conv.reduction == "sum":  # the user's batch, not this one
            kd = kd_term(s, t, conv.temperature, t2=conv.t2 and not conv.bare_kl, reduction="batchmean")
            kd = kd * conv.train_batch_size
        else:
            t2 = conv.t2 and not conv.bare_kl
            kd = kd_term(s, t, conv.temperature, t2=t2, reduction=conv.reduction)
        kd = kd_w * kd
    if conv.ce_weight and y is not None:
        ce = conv.ce_weight * F.cross_entropy(s, y)
    return kd, ce


def token_terms(
    conv, s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, *, as_trained: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted KD term, weighted CE term) on [B, L, V] logits aligned with `target` [B, L] (-100 not
    counted): the CE per counted token; the KL in `kd_dtype`, on the `top_k` target, T² as stated.
    `as_trained` divides the KL sum as the reduction does on this very batch (training code); else it
    is per counted token times the reduction's per-token multiplier at the measured tokens per
    sequence (`reduction_scale`: the probes' rows are not the training batches)."""
    counted = target != IGNORE
    n = counted.sum().clamp_min(1)
    kd_w = 1.0 if conv.bare_kl else conv.kd_weight
    kd = ce = s.new_zeros(())
    if kd_w:
        t2 = conv.temperature**2 if conv.t2 and not conv.bare_kl else 1.0
        kl = objective_divergence(conv, s, t, y=target).float() * counted
        if as_trained:
            divisor = {"token": n, "batchmean": s.shape[0], "mean": s.numel(), "sum": 1}[conv.reduction]
            kd = kd_w * (kl.sum() / divisor * t2)
        else:
            kd = kd_w * (kl.sum() / n * (t2 * conv.reduction_scale(s.shape[-1])))
    if conv.ce_weight:
        flat = s.reshape(-1, s.shape[-1]), target.reshape(-1)
        if as_trained:  # the training code's own mean over the counted tokens
            ce = conv.ce_weight * F.cross_entropy(*flat, ignore_index=IGNORE)
        else:
            ce = conv.ce_weight * (F.cross_entropy(*flat, ignore_index=IGNORE, reduction="sum") / n)
    return kd, ce


def unit_terms(conv, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE, KD at T) each a mean per unit, unweighted: per sample of [B, C] logits, or per counted
    token of [B, L, V] logits aligned with `y` [B, L] (-100 uncounted); the KD term as this objective
    computes it (its dtype and top-k target), without T² or the reduction's multiplier, which
    `term_weights` carries."""
    if conv.task != "causal-lm":
        return F.cross_entropy(s, y), kd_term(s, t, conv.temperature, t2=False, reduction="batchmean")
    n = (y != IGNORE).sum().clamp_min(1)
    ce = F.cross_entropy(s.reshape(-1, s.shape[-1]), y.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return ce / n, token_kd_mean(conv, s, t, y)


def row_mean_terms(conv, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple:
    """`unit_terms` of a causal LM with every row's tokens averaged on their own, then the rows averaged
    (rows that count no token left out): what a trainer computes when it accumulates micro-batches of one
    row, each divided by its own counted tokens, instead of dividing the sum by every counted token of
    the accumulated batch (Hugging Face's `num_items_in_batch`). Short rows' tokens then weigh more."""
    counted = y != IGNORE
    n = counted.sum(-1)
    rows, per = (n > 0).sum().clamp_min(1), n.clamp_min(1)
    ce = F.cross_entropy(s.transpose(1, 2), y.masked_fill(~counted, 0), reduction="none") * counted
    kd = objective_divergence(conv, s, t, y=y).float() * counted
    return (ce.sum(-1) / per).sum() / rows, (kd.sum(-1) / per).sum() / rows


def token_kd_mean(conv, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The KD divergence `conv` computes, per counted token of [B, L, V] logits (y == -100 uncounted),
    unweighted: `unit_terms`' KD term for a causal LM."""
    counted = y != IGNORE
    return (objective_divergence(conv, s, t, y=y).float() * counted).sum() / counted.sum().clamp_min(1)
