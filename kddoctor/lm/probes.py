"""The budgeted fine-tuning probes on tokens: the image capacity and (alpha, T) probes for causal LMs.

The main pass samples the rows (`rows.RowSample`: `TRAIN_ROWS` train and `VAL_ROWS` val sequences, their
first `TOKENS` positions, chosen by a seeded content hash, so the loader's order does not matter and no
loader is read twice). Copies of the student are fine-tuned on the train rows with a token-level KD
objective (every term per counted token, the KL in fp32 unless the stated objective ran lower) and
scored per counted token on both. The teacher's logits on the rows are kept when they fit
`TEACHER_CACHE_ELEMS`, else recomputed per step (a 150k vocabulary never holds [rows, tokens, V] in
memory). Each probe stops at its step budget or its time budget, whichever comes first, and says which.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.tokens import IGNORE
from .engine import lm_logits
from .facts import DTYPES, token_kl

TRAIN_ROWS = 32  # sequences the probes fine-tune on
VAL_ROWS = 64  # sequences the probes are scored on (inference only: more rows, less noise)
TOKENS = 128  # first positions of each row
BATCH = 8  # rows per fine-tuning step
LRS = (1e-4, 1e-3, 1e-2)  # the fit probe tries each Adam step size, then goes on with the best
LR = 1e-3  # the other probes' step size until the fit probe has chosen one
TEACHER_CACHE_ELEMS = 2**26  # teacher logits kept per split up to this many elements (else recomputed)


@dataclass(frozen=True)
class Objective:
    """ce * CE + kd * scale * KL_T(t||s), both per counted token; the KL in `dtype`, the teacher's
    target truncated to its top `top_k` logits (renormalized) when set."""

    ce: float
    kd: float
    temperature: float
    scale: float = 1.0  # T² and the stated reduction's per-token multiplier
    top_k: int | None = None
    dtype: str = "float32"

    @classmethod
    def textbook(cls, alpha_kd: float, temperature: float) -> Objective:
        return cls(1.0 - alpha_kd, alpha_kd, temperature, temperature**2)

    def loss(self, s: torch.Tensor, t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        counted = target != IGNORE
        n = counted.sum().clamp_min(1)
        out = s.new_zeros(())
        if self.ce:
            out = (
                out
                + self.ce
                * F.cross_entropy(
                    s.reshape(-1, s.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
                )
                / n
            )
        if self.kd:
            kl = self._kl(s, t).float()
            out = out + self.kd * self.scale * (kl * counted).sum() / n
        return out

    def _kl(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.top_k:
            return token_kl(s, t, self.temperature, DTYPES[self.dtype])
        # the renormalized top-k target: zero probability off the top k (xlogy: 0 log 0 = 0, not NaN)
        dt, temp = DTYPES[self.dtype], self.temperature
        kth = t.topk(self.top_k, -1).values[..., -1:]
        p = F.softmax(t.masked_fill(t < kth, float("-inf")).to(dt) / temp, -1)
        return (torch.xlogy(p, p) - p * F.log_softmax(s.to(dt) / temp, -1)).sum(-1)


@dataclass
class Tuned:
    model: nn.Module
    curve: list[tuple[int, float]]  # (step, train-row agreement) when asked for
    steps: int
    stopped_by: str  # "steps" or "time"
    lr: float
    opt: torch.optim.Optimizer | None = None  # kept so a run can be resumed (`finetune(resume=...)`)
    gen: torch.Generator | None = None


class Probes:
    """The rows, the teacher's targets on them, and fine-tuning + scoring of student copies."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        train: tuple,
        val: tuple,
        *,
        vocab: int,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.teacher, self.student, self.vocab, self.device, self.seed = teacher, student, vocab, device, seed
        self.cuda = device.type == "cuda"
        self.lr = LR  # the fit probe sets it to the step size that fitted best
        self.rows = {"train": [v.to(device) for v in train], "val": [v.to(device) for v in val]}
        self.cache: dict[str, torch.Tensor | None] = {}
        for split, (ids, _, _) in self.rows.items():
            fits = ids.numel() * vocab <= TEACHER_CACHE_ELEMS
            self.cache[split] = self._teacher(split, slice(None)) if fits else None

    def counted_tokens(self, split: str) -> int:
        return int((self.rows[split][2][:, 1:] != IGNORE).sum())

    def _logits(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            out = lm_logits(model(input_ids=ids, attention_mask=mask))
        return out[:, :-1, : self.vocab].float()

    @torch.no_grad()
    def _teacher(self, split: str, rows) -> torch.Tensor:
        ids, mask, _ = self.rows[split]
        if self.cache.get(split) is not None:
            return self.cache[split][rows]
        return self._logits(self.teacher, ids[rows], mask[rows])

    @torch.no_grad()
    def score(self, model: nn.Module, split: str) -> dict:
        """Per counted token on a split's rows: agreement with the teacher, KL(t||s), NLL, accuracy."""
        ids, mask, labels = self.rows[split]
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)  # tokens, agree, kl, nll, correct
        model.eval()
        for i in range(0, len(ids), BATCH):
            rows = slice(i, i + BATCH)
            s = self._logits(model, ids[rows], mask[rows])
            t = self._teacher(split, rows)
            target = labels[rows, 1:]
            counted = target != IGNORE
            logp_s, logp_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
            kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
            nll = -logp_s.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            pred = s.argmax(-1)
            for k, v in enumerate((counted, pred == t.argmax(-1), kl, nll, pred == target)):
                sums[k] += (v.double() * counted).sum()
        n = max(float(sums[0]), 1.0)
        tokens, agree, kl, nll, correct = (float(v) for v in sums)
        return {"agreement": agree / n, "kl": kl / n, "loss": nll / n, "acc": correct / n}

    def finetune(
        self,
        objective: Objective,
        *,
        steps: int,
        budget_s: float | None,
        seed: int = 0,
        eval_every: int = 0,
        lr: float | None = None,
        resume: Tuned | None = None,
    ) -> Tuned:
        """A copy of the student fine-tuned on the train rows up to step `steps` or for `budget_s`
        seconds (Adam at `lr`, else at the step size the fit probe chose); `resume` goes on with an
        earlier run (its model, optimizer state, batch order and curve) instead of a fresh copy."""
        ids, mask, labels = self.rows["train"]
        if resume is not None:
            model, opt, gen, lr = resume.model, resume.opt, resume.gen, resume.lr
            curve, first = list(resume.curve), resume.steps + 1
        else:
            model = copy.deepcopy(self.student).to(self.device)
            for p in model.parameters():
                p.requires_grad_(True)
            lr = lr or self.lr
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            gen = torch.Generator().manual_seed(self.seed * 1000 + seed)
            curve, first = [], 1
            if eval_every:
                curve.append((0, self.score(model, "train")["agreement"]))
        bs = min(BATCH, len(ids))
        start, done, stopped_by = time.perf_counter(), first - 1, "steps"
        with torch.enable_grad():
            for step in range(first, steps + 1):
                model.train()
                idx = torch.randperm(len(ids), generator=gen)[:bs].to(self.device)
                s = self._logits(model, ids[idx], mask[idx])
                loss = objective.loss(s, self._teacher("train", idx), labels[idx, 1:])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done = step
                out_of_time = budget_s is not None and time.perf_counter() - start > budget_s and step < steps
                if eval_every and (step % eval_every == 0 or step == steps or out_of_time):
                    curve.append((step, self.score(model, "train")["agreement"]))
                if out_of_time:
                    stopped_by = "time"
                    break
        return Tuned(model.eval(), curve, done, stopped_by, lr, opt, gen)
