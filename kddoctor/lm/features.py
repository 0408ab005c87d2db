"""Both causal LMs' last hidden states, mean-pooled per sequence over its attended tokens, for the
domain classifier of the text-parity checks (the image pass's penultimate features, for tokens).

A forward pre-hook on each model's output embedding (the LM head) sees the hidden states the logits are
made of; a bottom-k reservoir keyed by each sequence's content keeps `rows` of them per split, so the
kept sequences are the same whatever the loader order. When the teacher's logits come from the cache,
the teacher runs on the few rows that can still enter the reservoir: the subset is the same either way.
"""

from __future__ import annotations

import torch
from torch import nn

from .._sampling import ContentKeys, Reservoir
from ..taps import classifier_of


def lm_head_of(model: nn.Module) -> nn.Module | None:
    """The output embedding: Hugging Face's get_output_embeddings(), else the image pass's classifier."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else classifier_of(model)


class _Tap:
    def __init__(self, model: nn.Module) -> None:
        self.last: torch.Tensor | None = None
        head = lm_head_of(model)
        self.handle = head.register_forward_pre_hook(self._hook) if head is not None else None

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 3:
            self.last = args[0].detach()

    def take(self, mask: torch.Tensor) -> torch.Tensor | None:
        """The last forward's hidden states, mean-pooled over the attended positions: [B, H] (fp32)."""
        h, self.last = self.last, None
        if h is None or h.shape[:2] != mask.shape:
            return None
        m = mask.to(h.dtype)[..., None]
        return ((h * m).sum(1) / m.sum(1).clamp_min(1)).float()


class PooledFeatures:
    """Taps on both models and the reservoir of pooled rows (`offer` per batch, `result` once)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, rows: int) -> None:
        self.taps = {"teacher": _Tap(teacher), "student": _Tap(student)}
        self.reservoir = Reservoir(rows)
        self.width: dict[str, int] = {}

    def clear(self) -> None:
        for tap in self.taps.values():
            tap.last = None

    def offer(self, key_proj: torch.Tensor, mask: torch.Tensor, teacher_rerun=None) -> None:
        """Offer one batch's pooled rows (`key_proj`: the rows' content projections). `teacher_rerun(rows)`
        runs the teacher on those rows when its logits came from the cache (its tap saw nothing)."""
        keys = ContentKeys.key(key_proj)
        feats = {m: tap.take(mask) for m, tap in self.taps.items()}
        if feats["teacher"] is None and teacher_rerun is not None and feats["student"] is not None:
            feats["teacher"] = self._entering(keys, mask, teacher_rerun)
        if any(f is None for f in feats.values()):
            return
        for m, f in feats.items():
            self.width[m] = f.shape[1]
        self.reservoir.offer(keys, teacher=feats["teacher"], student=feats["student"])

    def _entering(self, keys: torch.Tensor, mask: torch.Tensor, teacher_rerun) -> torch.Tensor | None:
        """Teacher rows of a cached batch that can enter the reservoir (NaN for the others)."""
        r = self.reservoir
        full = r.keys is not None and len(r.keys) >= r.k
        rows = torch.nonzero(keys < r.keys.max() if full else torch.isfinite(keys)).flatten()
        width = self.width.get("teacher")
        if len(rows) == 0:
            return None if width is None else torch.full((len(keys), width), float("nan"), device=keys.device)
        teacher_rerun(rows)
        part = self.taps["teacher"].take(mask[rows])
        if part is None:
            return None
        out = torch.full((len(keys), part.shape[1]), float("nan"), device=part.device)
        out[rows] = part
        return out

    def result(self) -> dict:
        """{"teacher": [n, H_t], "student": [n, H_s]} as numpy (rows without both dropped)."""
        _, cols = self.reservoir.result()
        if not cols:
            return {}
        t, s = cols["teacher"], cols["student"]
        ok = torch.isfinite(t).all(1) & torch.isfinite(s).all(1)
        return {"teacher": t[ok].cpu().numpy(), "student": s[ok].cpu().numpy()}

    def close(self) -> None:
        for tap in self.taps.values():
            if tap.handle is not None:
                tap.handle.remove()
