"""One streaming pass of a causal-LM teacher and student over a split, scored per counted token."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..errors import UserError
from ..metrics.tokens import IGNORE, TokenMetrics
from .facts import LMFacts


def lm_batch(batch: object, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of one batch; labels default to input_ids where attended.

    Labels without an attention mask are refused: padding would be counted as tokens."""
    where = f"{split} batch {index}"
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise UserError(
            f"{where}: a causal-LM batch is a mapping with 'input_ids' (and 'attention_mask', 'labels')"
        )
    ids = torch.as_tensor(batch["input_ids"])
    if ids.ndim != 2:
        raise UserError(f"{where}: input_ids must be [batch, tokens], got {list(ids.shape)}")
    if "labels" in batch and "attention_mask" not in batch:
        raise UserError(
            f"{where} has labels but no attention_mask: pass the mask, so padding is never counted as tokens"
        )
    mask = torch.as_tensor(batch.get("attention_mask", torch.ones_like(ids))).bool()
    labels = torch.as_tensor(batch["labels"]) if "labels" in batch else ids.masked_fill(~mask, IGNORE)
    if labels.shape != ids.shape or mask.shape != ids.shape:
        raise UserError(
            f"{where}: labels and attention_mask must have the shape of input_ids {list(ids.shape)}"
        )
    return ids, mask, labels


def lm_logits(out: object) -> torch.Tensor:
    """[B, L, V] logits from a tensor or an output with `.logits` (Hugging Face)."""
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise UserError(f"a causal LM must return [batch, tokens, vocab] logits, got {shape}")
    return logits


def _vocab(t: torch.Tensor, s: torch.Tensor, allow_truncation: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student over one vocabulary; padded rows (151,936 vs 152,064) only when allowed."""
    vt, vs = t.shape[-1], s.shape[-1]
    if vt == vs:
        return t, s
    if not allow_truncation:
        raise UserError(
            f"teacher vocabulary {vt} vs student {vs}: if one only pads extra rows, pass "
            "--allow-vocab-truncation to compare the first min(V) rows; else the tokenizers differ"
        )
    v = min(vt, vs)
    return t[..., :v], s[..., :v]


def evaluate_lm(
    teacher: nn.Module,
    student: nn.Module,
    loader: Iterable,
    *,
    name: str,
    device: torch.device | str = "cpu",
    allow_vocab_truncation: bool = False,
    facts: dict | None = None,
) -> dict:
    """Both models over one split (eval mode, no grad): TokenMetrics.compute(), the vocabulary sizes and,
    under "facts", LMFacts.compute() (`facts`: LMFacts keywords: pad_id, top_k, temperature, dtype)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    metrics, gathered = TokenMetrics(device), LMFacts(device, **(facts or {}))
    sizes = (0, 0)
    with torch.inference_mode():
        for index, batch in enumerate(loader):
            ids, mask, labels = (v.to(device, non_blocking=cuda) for v in lm_batch(batch, name, index))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                t_full = lm_logits(teacher(input_ids=ids, attention_mask=mask))
                s_full = lm_logits(student(input_ids=ids, attention_mask=mask))
            t, s = _vocab(t_full, s_full, allow_vocab_truncation)
            gathered.batch(t_full, s_full, mask, labels, t.shape[-1])
            metrics.update(t, s, labels, on_chunk=gathered.chunk)
            sizes = (t_full.shape[-1], s_full.shape[-1])
            del t_full, s_full, t, s  # before the next forward: never three batches of logits at once
    if float(metrics.sums["tokens"]) == 0:
        raise UserError(f"the {name} split has no counted tokens (every label is -100 or it is empty)")
    return {
        **metrics.compute(),
        "vocab": min(sizes),
        "teacher_vocab": sizes[0],
        "student_vocab": sizes[1],
        "facts": gathered.compute(),
    }
