"""What the causal-LM checks read besides the token metrics.

`LMFacts`, gathered in the streaming pass (fixed-size sums, all-reduced under torchrun): how the
batches mask tokens (padding, prompt, counted, per sequence), both models' probability on the pad
token where tokens are counted, and the mass in vocabulary rows a truncation drops. `RowFacts`, on the
probes' content-sampled rows after the pass (so the sample is the same whatever the loader order or
the number of ranks): the teacher's mass in its top-k (the kept mass of a top-k truncated KD target,
train rows) and the KD term's KL at the training temperature in the training dtype next to fp32 (val
rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..losses import log_prob_kl, objective_divergence, token_divergence
from ..metrics.tokens import IGNORE, chunk_elems_for, counted_chunks

TOP_KS = (1, 5, 20, 50)  # kept teacher mass is reported at these k (and at a stated --teacher-top-k)
ROW_BINS = 2**15  # rows counted by their number of counted tokens (longer rows share the last bin)


class LMFacts:
    """update(teacher logits, student logits, ids, mask, labels, full vocab sizes) per batch; compute()."""

    def __init__(
        self, device: torch.device | str = "cpu", *, pad_id: int | None = None, chunk_elems: int | None = None
    ) -> None:
        self.device, self.pad_id = torch.device(device), pad_id
        self.chunk_elems = chunk_elems or chunk_elems_for(self.device)
        keys = ("sequences", "positions", "attended", "counted", "prompt", "counted_sq")
        keys += ("batches", "empty_rows", "masked_rows", "empty_batches")
        keys += ("t_pad", "s_pad", "t_dropped", "s_dropped")
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in keys}
        # how many rows count each number of tokens: what a loss averaged row by row re-weights
        self.sums["row_tokens"] = torch.zeros(ROW_BINS, dtype=torch.float64, device=self.device)

    def all_reduce(self) -> None:
        """Sum the state over every rank of an initialised torch.distributed group."""
        import torch.distributed as dist

        for v in self.sums.values():
            dist.all_reduce(v)

    def update(
        self,
        t_full: torch.Tensor,
        s_full: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        shared: int,
    ) -> None:
        """Standalone use: `batch` plus `chunk` over the counted rows (the engine instead hands `chunk`
        to TokenMetrics.update, which has the log-softmaxes already)."""
        self.batch(t_full, s_full, mask, labels, shared)
        shared_rows = (t_full[..., :shared], s_full[..., :shared])
        for (t, s), _, _ in counted_chunks(labels, self.chunk_elems, *shared_rows):
            logp_t, logp_s = F.log_softmax(t, -1), F.log_softmax(s, -1)
            self.chunk(logp_t, logp_s)

    def batch(
        self,
        t_full: torch.Tensor,
        s_full: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        shared: int,
    ) -> None:
        """Per batch: the mask counts, and the mass in vocabulary rows past the `shared` ones."""
        self._masks(mask, labels)
        if max(t_full.shape[-1], s_full.shape[-1]) == shared:
            return
        for key, full in (("t_dropped", t_full), ("s_dropped", s_full)):
            if full.shape[-1] > shared:
                for (rows,), _, _ in counted_chunks(labels, self.chunk_elems, full):
                    self.sums[key] += F.softmax(rows, -1)[:, shared:].sum()

    def _masks(self, mask: torch.Tensor, labels: torch.Tensor) -> None:
        counted = (labels[:, 1:] != IGNORE).double()
        per_seq = counted.sum(1)
        attended = mask[:, 1:].double()
        add = {
            "sequences": float(mask.shape[0]),
            "positions": float(attended.numel()),
            "attended": attended.sum(),
            "counted": per_seq.sum(),
            "counted_sq": (per_seq**2).sum(),
            "prompt": (attended * (1 - counted)).sum(),
            "batches": 1.0,
            "empty_rows": (per_seq == 0).double().sum(),  # rows whose every label is -100
            "masked_rows": (mask.sum(1) == 0).double().sum(),  # rows with an all-zero attention mask
            "empty_batches": (per_seq.sum() == 0).double(),  # a mean loss over them is 0/0
        }
        for k, v in add.items():
            self.sums[k] += v
        # index_add_, not bincount: bincount reads the largest index on the host (a sync per batch on a GPU)
        rows = per_seq.long().clamp_max(ROW_BINS - 1)
        self.sums["row_tokens"].index_add_(0, rows, torch.ones_like(per_seq))

    def chunk(self, logp_t: torch.Tensor, logp_s: torch.Tensor) -> None:
        """Per fp32 chunk of counted rows over the shared vocabulary (log-softmaxes given)."""
        if self.pad_id is not None and self.pad_id < logp_t.shape[-1]:
            self.sums["t_pad"] += logp_t[:, self.pad_id].exp().sum()
            self.sums["s_pad"] += logp_s[:, self.pad_id].exp().sum()

    def compute(self) -> dict:
        rows = self.sums["row_tokens"].cpu()
        s = {k: float(v) for k, v in self.sums.items() if k != "row_tokens"}
        n, seqs = max(s["counted"], 1.0), max(s["sequences"], 1.0)
        mean_len = s["counted"] / seqs
        return {
            "sequences": int(s["sequences"]),
            "positions": int(s["positions"]),
            "counted_fraction": s["counted"] / max(s["positions"], 1.0),
            "counted_of_attended": s["counted"] / max(s["attended"], 1.0),
            "pad_fraction": 1.0 - s["attended"] / max(s["positions"], 1.0),
            "prompt_fraction": s["prompt"] / max(s["positions"], 1.0),
            "tokens_per_sequence": mean_len,
            "empty_row_share": s["empty_rows"] / seqs,
            "masked_rows": int(s["masked_rows"]),
            "empty_batches": int(s["empty_batches"]),
            "batches": int(s["batches"]),
            "tokens_per_sequence_sd": max(s["counted_sq"] / seqs - mean_len**2, 0.0) ** 0.5,
            "pad_id": self.pad_id,
            "teacher_pad_mass": s["t_pad"] / n if self.pad_id is not None else None,
            "student_pad_mass": s["s_pad"] / n if self.pad_id is not None else None,
            "teacher_dropped_mass": s["t_dropped"] / n,
            "student_dropped_mass": s["s_dropped"] / n,
            **row_weights(rows),
        }


def row_weights(rows: torch.Tensor) -> dict:
    """From the count of rows holding each number of counted tokens (`rows[k]`: rows that count k):
    the share of a loss's weight that averaging each row on its own moves between rows, against one
    mean over every counted token (1/2 sum_r |1/R - n_r/N| over the R rows that count any; 0 when every
    row counts as many tokens), and the fewest and most tokens a row counts."""
    k = torch.arange(len(rows), dtype=torch.float64)
    has = (rows > 0) & (k > 0)
    if not has.any():
        return {"row_weight_shift": 0.0, "row_tokens_min": 0, "row_tokens_max": 0}
    r, n = rows[has], k[has]
    big_r, big_n = r.sum(), (r * n).sum()
    shift = 0.5 * (r * (1 / big_r - n / big_n).abs()).sum()
    return {"row_weight_shift": float(shift), "row_tokens_min": int(n[0]), "row_tokens_max": int(n[-1])}


class RowFacts:
    """The teacher's top-k kept mass, the stated KD divergence in the training dtype next to fp32, and,
    for a top-k target whose missing mass is dropped, how often the truncated divergence goes negative,
    over chunks of counted rows (the probes' sampled rows). `conv`: the stated objective."""

    def __init__(self, conv) -> None:
        self.conv = conv
        self.ks = tuple(sorted({*TOP_KS, *([conv.top_k] if conv.top_k else [])}))
        keys = ("kept_rows", "prec_rows", "kl32", "kl_low", "kl_zero", "kl_negative", "kl_nonfinite")
        self.sums = dict.fromkeys(keys + ("truncated_rows", "truncated_negative", "kl_trivial"), 0.0)
        self.sums.update({f"kept_{k}": 0.0 for k in self.ks})

    def kept(self, t: torch.Tensor, s: torch.Tensor | None = None) -> None:
        """Teacher logits [n, V] (fp32): the mass in its top k at every reported k; with the student's,
        how often a dropped-mass top-k divergence is negative (verl clamped such a loss to 0)."""
        top = F.softmax(t, -1).topk(min(max(self.ks), t.shape[-1]), -1).values.cumsum(-1)
        self.sums["kept_rows"] += float(len(t))
        for k in self.ks:
            self.sums[f"kept_{k}"] += float(top[:, min(k, top.shape[-1]) - 1].sum())
        c = self.conv
        if s is not None and c.top_k and c.top_k_rule == "none":
            per = token_divergence(s, t, c.temperature, "float32", c.top_k, c.divergence, c.beta, "none")
            self.sums["truncated_rows"] += float(len(t))
            self.sums["truncated_negative"] += float((per < 0).sum())

    def precision(self, t: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The stated KD divergence per token at the training T, in fp32 and in the training dtype (`y`:
        the tokens the rows predict, for a support that holds them)."""
        ref = objective_divergence(self.conv, s, t, torch.float32, y).double()
        low = ref if self.conv.kd_dtype == "float32" else objective_divergence(self.conv, s, t, y=y).double()
        finite = torch.isfinite(low)
        # a support too small to hold a divergence (a top-1 target renormalized) reads 0 where the two
        # models differ: no gradient from the KD term on that token
        trivial = 0.0
        if self.conv.top_k:
            full = log_prob_kl(
                F.log_softmax(t / self.conv.temperature, -1), F.log_softmax(s / self.conv.temperature, -1)
            )
            trivial = float(((ref.abs() <= 1e-9) & (full > 1e-4)).sum())
        add = {
            "kl_trivial": trivial,
            "prec_rows": float(len(t)),
            "kl32": float(ref.sum()),
            "kl_low": float(torch.where(finite, low, 0.0).sum()),
            "kl_zero": float(((low <= 0) & (ref > 1e-6)).sum()),
            "kl_negative": float((low < -1e-6).sum()),
            "kl_nonfinite": float((~finite).sum()),
        }
        for k, v in add.items():
            self.sums[k] += v

    def compute(self) -> dict:
        s, rows = self.sums, max(self.sums["prec_rows"], 1.0)
        negative = s["truncated_negative"] / s["truncated_rows"] if s["truncated_rows"] else None
        return {
            "teacher_kept_mass": {k: s[f"kept_{k}"] / max(s["kept_rows"], 1.0) for k in self.ks},
            "kept_mass_tokens": int(s["kept_rows"]),
            "truncated_negative": negative,
            "precision": {
                "dtype": self.conv.kd_dtype,
                "divergence": self.conv.divergence,
                "temperature": self.conv.temperature,
                "tokens": int(s["prec_rows"]),
                "kl_fp32": s["kl32"] / rows,
                "kl_dtype": s["kl_low"] / rows,
                "zero_fraction": s["kl_zero"] / rows,
                "trivial_fraction": s["kl_trivial"] / rows,
                "negative_fraction": s["kl_negative"] / rows,
                "nonfinite_fraction": s["kl_nonfinite"] / rows,
            },
        }
