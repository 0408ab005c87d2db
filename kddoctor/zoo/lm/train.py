"""How the LM zoo trains: a teacher pretrained on packed text, and a student distilled on the objective
its recipe says, the KL reduced as the recipe's training code reduces it on each batch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...convention import KDConvention
from ...flags import resolve
from ...lm.engine import lm_logits
from ...losses import row_mean_terms
from ...metrics.tokens import IGNORE
from .catalogue import Distill


def objective(d: Distill) -> KDConvention:
    """The objective the recipe's training code computed (the user may state another: the scenario's
    `stated`). A trainer's preset in `extra` brings its own weights and loss temperature."""
    extra = dict(d.extra)
    kw = {"top_k": d.top_k, "kd_dtype": d.kd_dtype, "task": "causal-lm"}
    if "preset" not in extra:  # the recipe's own weights, T and reduction
        kw.update(alpha=d.alpha_kd, temperature=d.temperature, reduction=d.reduction)
    return resolve(**kw, **extra)


def logits(model: nn.Module, batch: dict, vocab: int) -> torch.Tensor:
    """[B, L, vocab] logits of a TinyGPT or a transformers model."""
    return lm_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))[..., :vocab]


def cosine(total: int, peak: float, warmup: int = 0) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to a tenth of `peak` at step `total` (a run stopped early stops
    where this schedule had got to)."""

    def lr(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        done = min(1.0, (step - warmup) / max(1, total - warmup))
        return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))

    return lr


def distill(
    student: nn.Module,
    teacher: nn.Module,
    d: Distill,
    next_batch: Callable[[], dict],
    vocab: int,
    schedule: Callable[[int], float] | None = None,
) -> nn.Module:
    """KD of a student for `d.steps` steps of `next_batch()` (AdamW at `d.lr`, or `schedule(step)`)."""
    loss_of = objective(d)
    opt = torch.optim.AdamW(student.parameters(), lr=d.lr, weight_decay=0.0)
    student.train()
    teacher.eval()
    gen = torch.Generator().manual_seed(d.steps * 7 + 3)
    for step in range(d.steps):
        if schedule is not None:
            for group in opt.param_groups:
                group["lr"] = schedule(step)
        b = next_batch()
        if loss_of.lmbda and float(torch.rand((), generator=gen)) < loss_of.lmbda:
            b = on_policy(student, b, vocab, loss_of.sample_temperature or 1.0, gen)
        if d.label_shift:  # the training code shifted its labels once more than the model does
            lab = b["labels"]
            pad = torch.full_like(lab[:, : d.label_shift], IGNORE)
            b = {**b, "labels": torch.cat([lab[:, d.label_shift :], pad], 1)}
        s = logits(student, b, vocab)[:, :-1]
        with torch.no_grad():
            t = logits(teacher, b, vocab)[:, :-1]
        if d.token_norm == "rows":  # a trainer that divides each one-row micro-batch by its own tokens
            a, w = loss_of.term_weights(vocab)
            ce, kd = row_mean_terms(loss_of, s, t, b["labels"][:, 1:])
            loss = a * ce + w * kd
        else:
            loss = loss_of.token_loss(s, t, b["labels"][:, 1:], as_trained=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return student.eval()


PROMPT = 16  # on-policy batches keep this many tokens of each row as the prompt


@torch.no_grad()
def on_policy(student: nn.Module, b: dict, vocab: int, temperature: float, gen: torch.Generator) -> dict:
    """The batch's rows continued by the student itself from their first PROMPT tokens (sampled at
    `temperature`, to each row's own length): TRL's on-policy batch, its prompt masked from the loss."""
    ids, mask = b["input_ids"].clone(), b["attention_mask"]
    was = student.training
    student.eval()
    for pos in range(PROMPT, ids.shape[1]):
        out = logits(student, {"input_ids": ids[:, :pos], "attention_mask": mask[:, :pos]}, vocab)[:, -1]
        nxt = torch.multinomial(torch.softmax(out.float() / temperature, -1), 1, generator=gen)[:, 0]
        ids[:, pos] = torch.where(mask[:, pos].bool(), nxt, ids[:, pos])
    student.train(was)
    labels = ids.masked_fill(mask == 0, IGNORE)
    labels[:, :PROMPT] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pretrain(
    model: nn.Module, rows: torch.Tensor, steps: int, batch: int, schedule: Callable[[int], float], seed: int
) -> nn.Module:
    """Next-token CE on random packed rows [N, L] (no padding)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=schedule(0), weight_decay=0.01)
    model.train()
    vocab = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = schedule(step)
        x = rows[torch.randint(0, len(rows), (batch,), generator=gen)]
        out = lm_logits(model(input_ids=x))[:, :-1]
        vocab = vocab or out.shape[-1]
        loss = F.cross_entropy(out.reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
