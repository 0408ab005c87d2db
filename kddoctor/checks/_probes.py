"""Shared machinery of the budgeted probes: cached inputs, teacher targets, short fine-tuning."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..convention import KDConvention
from ..engine import as_logits

PROBE_LR = 1e-3  # Adam step size of every fine-tuning probe


def cached(ev, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's probe inputs (a seeded random subset); "train" is the train side (train_eval if given)."""
    r = ev.side(split)
    return r.cache_x.to(ev.device), r.cache_y.to(ev.device)


@torch.no_grad()
def forward(model: nn.Module, x: torch.Tensor, batch: int, num_classes: int | None = None) -> torch.Tensor:
    """Logits of `model` in its current mode, in chunks, float32."""
    cuda = x.device.type == "cuda"
    outs = []
    for i in range(0, len(x), batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            outs.append(as_logits(model(x[i : i + batch]), num_classes).float())
    return torch.cat(outs)


def teacher_logits(ev, split: str) -> torch.Tensor:
    """Eval-mode teacher logits on a split's cached inputs (computed once per run)."""
    key = f"teacher_logits_{split}"
    if key not in ev.memo:
        x, _ = cached(ev, split)
        ev.teacher.eval()
        ev.memo[key] = forward(ev.teacher, x, ev.config.budgets.eval_batch, ev.num_classes)
    return ev.memo[key]


def score(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> dict:
    """loss / acc / agreement / kl of student logits against labels and teacher logits."""
    t_logp, s_logp = F.log_softmax(t, 1), F.log_softmax(s, 1)
    return {
        "loss": float(F.nll_loss(s_logp, y)),
        "acc": float((s.argmax(1) == y).float().mean()),
        "agreement": float((s.argmax(1) == t.argmax(1)).float().mean()),
        "kl": float((t_logp.exp() * (t_logp - s_logp)).sum(1).mean()),
    }


@dataclass
class Tuned:
    """A fine-tuned student copy and what the probe measured: the steps it ran and why it stopped."""

    model: nn.Module
    curve: list[tuple[int, float]]  # (step, train-cache agreement), when asked for
    steps: int
    stopped_by: str  # "steps": the step budget ran out; "time": the time budget did first
    seconds: float

    def evidence(self, name: str) -> dict:
        # no seconds: timings live in run.timings, so a repeated run repeats its evidence
        return {
            f"{name}_steps_done": self.steps,
            f"{name}_stopped_by": self.stopped_by,
        }


def finetune(
    ev,
    convention: KDConvention,
    *,
    steps: int,
    seed: int = 0,
    eval_every: int = 0,
    budget_s: float | None = None,
    label: str = "fine-tuning",
) -> Tuned:
    """A copy of the student fine-tuned on the cached train inputs with the given KD objective, for
    `steps` steps or `budget_s` seconds, whichever comes first (the curve's last point is where it
    stopped). With eval_every > 0 the train-cache agreement is recorded along the way."""
    x, y = cached(ev, "train")
    t = teacher_logits(ev, "train")
    model = copy.deepcopy(ev.student).to(ev.device)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=PROBE_LR)
    gen = torch.Generator().manual_seed(ev.config.seed * 1000 + seed)
    bs = min(ev.config.budgets.probe_batch, len(x))
    curve: list[tuple[int, float]] = []
    cuda = x.device.type == "cuda"

    def agreement() -> float:
        model.eval()
        s = forward(model, x, ev.config.budgets.eval_batch, ev.num_classes)
        return float((s.argmax(1) == t.argmax(1)).float().mean())

    if eval_every:  # step 0: the checkpoint as it stands, so the curve shows the first steps' jump
        curve.append((0, agreement()))
    start, done, stopped_by = time.perf_counter(), 0, "steps"
    with torch.enable_grad(), ev.progress_task(label, steps) as advance:
        for step in range(1, steps + 1):
            model.train()
            idx = torch.randint(0, len(x), (bs,), generator=gen).to(x.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                s = as_logits(model(x[idx]), ev.num_classes).float()
            loss = convention.loss(s, t[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = step
            advance()
            out_of_time = budget_s is not None and time.perf_counter() - start > budget_s and step < steps
            if eval_every and (step % eval_every == 0 or step == steps or out_of_time):
                curve.append((step, agreement()))
            if out_of_time:
                stopped_by = "time"
                break
    return Tuned(model.eval(), curve, done, stopped_by, time.perf_counter() - start)


def val_score(ev, model: nn.Module) -> dict:
    x, y = cached(ev, "val")
    return score(
        forward(model, x, ev.config.budgets.eval_batch, ev.num_classes), teacher_logits(ev, "val"), y
    )


def checkpoint_val_score(ev) -> dict:
    """The student as it stands, scored on the val cache (the reference for every probe)."""
    if "checkpoint_val" not in ev.memo:
        ev.student.eval()
        ev.memo["checkpoint_val"] = val_score(ev, ev.student)
    return ev.memo["checkpoint_val"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of scores (positives should score higher); 0.5 when either side is empty."""
    from sklearn.metrics import roc_auc_score

    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))
