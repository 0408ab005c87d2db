"""Exposure bias: does the student still match its teacher on text it wrote itself?

Teacher forcing scores the student on human text; at inference it continues its own. From val prompts
(the first `prompt` tokens of fully attended val sequences), the student samples `new` tokens at
temperature 1 (seeded); KL(t||s) on those positions is compared with KL(t||s) on the same positions of
the original text (teacher forcing). A fixed, small budget: `sequences` x `new` single-token steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import log_prob_kl
from .engine import lm_logits


def _kl(teacher: nn.Module, student: nn.Module, ids: torch.Tensor, start: int, vocab: int) -> torch.Tensor:
    """Per-sequence mean KL(t||s) over the predictions of tokens start.. (fp32, first `vocab` rows)."""
    mask = torch.ones_like(ids)
    t = lm_logits(teacher(input_ids=ids, attention_mask=mask))[:, start - 1 : -1, :vocab].float()
    s = lm_logits(student(input_ids=ids, attention_mask=mask))[:, start - 1 : -1, :vocab].float()
    logp_t, logp_s = F.log_softmax(t, -1), F.log_softmax(s, -1)
    return log_prob_kl(logp_t, logp_s).mean(-1)


def prompts(batches: list, sequences: int, length: int) -> torch.Tensor | None:
    """Up to `sequences` val rows whose first `length` tokens are all attended; None if none are."""
    rows = []
    for ids, mask, _ in batches:
        if ids.shape[1] < length:
            continue
        full = mask[:, :length].all(1)
        rows.extend(ids[full, :length])
        if len(rows) >= sequences:
            break
    return torch.stack(rows[:sequences]) if rows else None


def exposure(
    teacher: nn.Module,
    student: nn.Module,
    batches: list,
    *,
    vocab: int,
    device: torch.device,
    sequences: int = 16,
    prompt: int = 16,
    new: int = 32,
    seed: int = 0,
) -> dict | None:
    """Teacher-forced vs on-policy KL(t||s) (None when no val sequence is long enough)."""
    seqs = prompts(batches, sequences, prompt + new)
    if seqs is None:
        return None
    seqs = seqs.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode():
        text = seqs[:, :prompt]
        for _ in range(new):  # no KV cache: any model that maps ids -> logits works
            out = lm_logits(student(input_ids=text, attention_mask=torch.ones_like(text)))
            probs = F.softmax(out[:, -1, :vocab].float(), -1)
            text = torch.cat([text, torch.multinomial(probs, 1, generator=gen)], 1)
        on_policy = _kl(teacher, student, text, prompt, vocab)
        forced = _kl(teacher, student, seqs, prompt, vocab)
    return {
        "sequences": int(seqs.shape[0]),
        "prompt_tokens": prompt,
        "new_tokens": new,
        "kl_teacher_forced": float(forced.mean()),
        "kl_on_policy": float(on_policy.mean()),
        "kl_on_policy_by_sequence": [round(float(v), 5) for v in on_policy],
    }
