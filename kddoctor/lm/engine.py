"""One streaming pass of a causal-LM teacher and student over a split, scored per counted token."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..data import loader_batches
from ..errors import UserError
from ..metrics.tokens import IGNORE, TokenMetrics
from .facts import LMFacts
from .rows import RowSample


def lm_batch(batch: object, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of one batch; labels default to input_ids where attended.

    Labels without an attention mask are refused: padding would be counted as tokens."""
    where = f"{split} batch {index}"
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise UserError(
            f"{where}: a causal-LM batch is a mapping with 'input_ids' (and 'attention_mask', 'labels')"
        )
    ids = _tensor(batch["input_ids"], "input_ids", where)
    if ids.ndim != 2:
        raise UserError(f"{where}: input_ids must be [batch, tokens], got {list(ids.shape)}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise UserError(f"{where}: input_ids must be integer token ids, got {ids.dtype}")
    if "labels" in batch and "attention_mask" not in batch:
        raise UserError(
            f"{where} has labels but no attention_mask: pass the mask, so padding is never counted as tokens"
        )
    mask = _tensor(batch.get("attention_mask", torch.ones_like(ids)), "attention_mask", where)
    labels = _tensor(batch["labels"], "labels", where) if "labels" in batch else None
    for key, value in (("attention_mask", mask), ("labels", labels)):
        if value is not None and value.shape != ids.shape:
            raise UserError(
                f"{where}: {key} must have the shape of input_ids {list(ids.shape)}, got {list(value.shape)}"
            )
    mask = mask.bool()
    return ids, mask, labels if labels is not None else ids.masked_fill(~mask, IGNORE)


def _tensor(value: object, key: str, where: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{where}: {key} must be a rectangular [batch, tokens] array (pad rows to one length): {e}"
        ) from None


def _forward(model: nn.Module, role: str, ids: torch.Tensor, mask: torch.Tensor, where: str) -> torch.Tensor:
    try:
        return lm_logits(model(input_ids=ids, attention_mask=mask))
    except IndexError as e:  # an embedding or position table indexed past its end
        raise UserError(
            f"{where}: the {role} raised IndexError ({e}): its token ids must be below its embedding rows "
            f"and its sequences no longer than its position table (this batch: ids up to "
            f"{int(ids.max())}, {ids.shape[1]} tokens)"
        ) from None


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


def _check_alignment(ids: torch.Tensor, labels: torch.Tensor, where: str) -> bool:
    """Refuse labels that were shifted already (a second shift scores every token against the one after
    next); True once a batch had enough counted tokens to tell, so later batches skip the check."""
    counted = labels[:, :-1] != IGNORE
    if int(counted.sum()) < 16:
        return False
    same = float((labels[:, :-1] == ids[:, :-1])[counted].float().mean())
    after = float((labels[:, :-1] == ids[:, 1:])[counted].float().mean())
    if same < 0.5 and after > 0.9:
        raise UserError(
            f"{where}: the labels look shifted already ({after:.0%} of counted labels equal the next input "
            f"token, {same:.0%} the token at their own position); kddoctor shifts them as Hugging Face "
            "causal LMs do: pass labels aligned with input_ids (input_ids with -100 where not counted)"
        )
    return True


def _check_labels(labels: torch.Tensor, vocab: int, where: str) -> None:
    """Labels are -100 or token ids below the compared vocabulary (checked where the loader made them)."""
    counted = labels[labels != IGNORE]
    if not counted.numel():
        return
    low, high = int(counted.min()), int(counted.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise UserError(
            f"{where}: labels must be -100 (not counted) or token ids below the vocabulary ({vocab:,}); "
            f"found {bad}"
        )


def evaluate_lm(
    teacher: nn.Module,
    student: nn.Module,
    loader: Iterable,
    *,
    name: str,
    device: torch.device | str = "cpu",
    allow_vocab_truncation: bool = False,
    facts: dict | None = None,
    rows: RowSample | None = None,
) -> dict:
    """Both models over one split (eval mode, no grad): TokenMetrics.compute(), the vocabulary sizes and,
    under "facts", LMFacts.compute() (`facts`: LMFacts keywords: pad_id, top_k, temperature, dtype)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    metrics, gathered = TokenMetrics(device), LMFacts(device, **(facts or {}))
    sizes, aligned = (0, 0), False
    with torch.inference_mode():
        for index, batch in loader_batches(loader, name):
            host = lm_batch(batch, name, index)
            where = f"{name} batch {index}"
            aligned = aligned or _check_alignment(host[0], host[2], where)
            if rows is not None:
                rows.add(*host)
            ids, mask, labels = (v.to(device, non_blocking=cuda) for v in host)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                t_full = _forward(teacher, "teacher", ids, mask, where)
                s_full = _forward(student, "student", ids, mask, where)
            t, s = _vocab(t_full, s_full, allow_vocab_truncation)
            _check_labels(host[2], t.shape[-1], where)
            gathered.batch(t_full, s_full, mask, labels, t.shape[-1])
            metrics.update(t, s, labels, on_chunk=gathered.chunk)
            sizes = (t_full.shape[-1], s_full.shape[-1])
            del t_full, s_full, t, s  # before the next forward: never three batches of logits at once
    if float(metrics.sums["tokens"]) == 0:
        raise UserError(
            f"the {name} split has no counted tokens: a label counts from a sequence's second position "
            "(each position predicts the next), so every label is -100, every sequence has one token, or "
            "the split is empty"
        )
    return {
        **metrics.compute(),
        "vocab": min(sizes),
        "teacher_vocab": sizes[0],
        "student_vocab": sizes[1],
        "facts": gathered.compute(),
    }
