"""Teacher-student metric math, written once.

`pair_update` turns one batch into fixed-size sufficient statistics (sums, 15-bin histograms,
per-class counts); `compute_pair_stats` turns accumulated statistics into the metrics of the
results schema. Streaming accumulation and the all-at-once function share these two pieces,
so streaming over any batch split equals computing on the concatenated data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

N_BINS = 15  # equal-width confidence bins for ECE, as in Guo et al. (2017)

# Per-sample columns kept after the pass: a few floats per sample, never the logits.
SAMPLE_COLUMNS = ("target", "t_pred", "s_pred", "t_loss", "s_loss", "t_conf", "s_conf", "kl", "valid")


def empty_stats(num_classes: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Zeroed sufficient statistics (float64 so sums over millions of samples stay exact enough)."""
    z = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
    stats = {
        k: z(())
        for k in (
            "n",
            "rows",
            "nonfinite",
            "bad_target",
            "t_loss",
            "s_loss",
            "t_correct",
            "s_correct",
            "agree",
            "kl",
        )
    }
    for m in ("t", "s"):
        for k in ("bin_count", "bin_conf", "bin_correct"):
            stats[f"{m}_{k}"] = z(N_BINS)
    for k in ("cls_count", "cls_agree", "cls_t_correct", "cls_s_correct"):
        stats[k] = z(num_classes)
    return stats


def bin_index(conf: torch.Tensor) -> torch.Tensor:
    """Bin b holds confidences in [b/15, (b+1)/15); a confidence of exactly 1 goes to the last bin.
    The one binning of every reliability histogram (image pairs and LM tokens)."""
    return (conf * N_BINS).long().clamp_(0, N_BINS - 1)


_bin_index = bin_index  # the former private name, kept for existing callers


def pair_update(
    t_logits: torch.Tensor, s_logits: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One batch -> (sufficient statistics, per-sample columns [B, len(SAMPLE_COLUMNS)]).

    Rows with a non-finite logit, or a target outside [0, num_classes), are counted and
    excluded from every metric; no host synchronisation happens here.
    """
    t = t_logits.float()
    s = s_logits.float()
    y = targets.long()
    finite = torch.isfinite(t).all(1) & torch.isfinite(s).all(1)
    in_range = (y >= 0) & (y < num_classes)
    valid = finite & in_range
    w = valid.double()
    t = torch.where(finite[:, None], t, torch.zeros_like(t))
    s = torch.where(finite[:, None], s, torch.zeros_like(s))
    y_safe = torch.where(in_range, y, torch.zeros_like(y))

    t_logp = F.log_softmax(t, dim=1)
    s_logp = F.log_softmax(s, dim=1)
    t_loss = -t_logp.gather(1, y_safe[:, None]).squeeze(1)
    s_loss = -s_logp.gather(1, y_safe[:, None]).squeeze(1)
    t_conf, t_pred = t_logp.exp().max(1)
    s_conf, s_pred = s_logp.exp().max(1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(1)
    t_ok = (t_pred == y_safe).double()
    s_ok = (s_pred == y_safe).double()
    agree = (t_pred == s_pred).double()

    stats = empty_stats(num_classes, t.device)
    stats["rows"] += float(len(y))
    stats["n"] += w.sum()
    stats["nonfinite"] += (~finite).double().sum()
    stats["bad_target"] += (finite & ~in_range).double().sum()
    stats["t_loss"] += (t_loss.double() * w).sum()
    stats["s_loss"] += (s_loss.double() * w).sum()
    stats["t_correct"] += (t_ok * w).sum()
    stats["s_correct"] += (s_ok * w).sum()
    stats["agree"] += (agree * w).sum()
    stats["kl"] += (kl.double() * w).sum()
    for m, conf, ok in (("t", t_conf, t_ok), ("s", s_conf, s_ok)):
        idx = bin_index(conf)
        stats[f"{m}_bin_count"].index_add_(0, idx, w)
        stats[f"{m}_bin_conf"].index_add_(0, idx, conf.double() * w)
        stats[f"{m}_bin_correct"].index_add_(0, idx, ok * w)
    stats["cls_count"].index_add_(0, y_safe, w)
    stats["cls_agree"].index_add_(0, y_safe, agree * w)
    stats["cls_t_correct"].index_add_(0, y_safe, t_ok * w)
    stats["cls_s_correct"].index_add_(0, y_safe, s_ok * w)

    columns = torch.stack(
        [y.float(), t_pred.float(), s_pred.float(), t_loss, s_loss, t_conf, s_conf, kl, valid.float()], dim=1
    )
    return stats, columns


def merge_stats(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Statistics are plain sums, so merging is addition (also what all_reduce does)."""
    return {k: a[k] + b[k].to(a[k].device) for k in a}


def ece_from_bins(count: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor) -> float:
    """Expected calibration error from 15-bin sums (count, summed confidence, summed correctness per
    bin): sum_b |acc_b - conf_b| * n_b / N, N = count.sum(); shared by image pairs and LM tokens."""
    n = float(count.sum())
    return float((correct - conf).abs().sum()) / n if n else float("nan")


def compute_pair_stats(stats: dict[str, torch.Tensor]) -> dict:
    """Accumulated statistics -> the metrics block of the results schema (plus diagnostics)."""
    st = {k: v.detach().double().cpu() for k, v in stats.items()}
    n = float(st["n"])
    div = (lambda x: float(x) / n) if n else (lambda x: float("nan"))
    out = {
        "teacher": {
            "loss": div(st["t_loss"]),
            "acc": div(st["t_correct"]),
            "ece": ece_from_bins(st["t_bin_count"], st["t_bin_conf"], st["t_bin_correct"]),
        },
        "student": {
            "loss": div(st["s_loss"]),
            "acc": div(st["s_correct"]),
            "ece": ece_from_bins(st["s_bin_count"], st["s_bin_conf"], st["s_bin_correct"]),
        },
        "agreement": div(st["agree"]),
        "kl": div(st["kl"]),
    }
    return out


def wilson_interval(successes: float, n: float, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a proportion (sound at 0 %, 100 % and tiny n, unlike p ± z·se)."""
    if n <= 0:
        return [0.0, 1.0]
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # at 0 % and 100 % the bound is exact, not a rounding error away from it
    return [0.0 if successes <= 0 else lo, 1.0 if successes >= n else hi]


def proportion_intervals(stats: dict) -> dict:
    """Wilson intervals of teacher/student accuracy and agreement from accumulated statistics."""
    n = float(stats["n"])
    return {
        "teacher_acc": wilson_interval(float(stats["t_correct"]), n),
        "student_acc": wilson_interval(float(stats["s_correct"]), n),
        "agreement": wilson_interval(float(stats["agree"]), n),
    }
