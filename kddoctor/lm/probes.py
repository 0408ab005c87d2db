"""The budgeted fine-tuning probes on tokens: the image capacity and (alpha, T) probes for causal LMs.

The main pass samples the rows (`rows.RowSample`: `TRAIN_ROWS` train and `VAL_ROWS` val sequences, their
first `TOKENS` positions, chosen by a seeded content hash, so the loader's order does not matter and no
loader is read twice). Copies of the student are fine-tuned on the train rows with a token-level KD
objective (`KDConvention.token_loss`: every term per counted token, the KL in fp32 unless the stated
objective ran lower, the stated reduction as its per-token multiplier) and
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

from ..convention import KDConvention
from ..losses import IGNORE, log_prob_kl, objective_divergence
from ..metrics.tokens import CPU_CHUNK, counted_chunks
from .engine import lm_logits

TRAIN_ROWS = 128  # sequences the probes fine-tune on: more tokens than a probe's steps can memorize
VAL_ROWS = 64  # sequences the probes are scored on (inference only: more rows, less noise)
TOKENS = 128  # first positions of each row
BATCH = 8  # rows per fine-tuning step
LRS = (1e-4, 1e-3, 1e-2)  # the fit probe tries each Adam step size, then goes on with the best
LR = 1e-3  # the other probes' step size until the fit probe has chosen one
CONTINUE_LRS = (1e-4, 3e-4, 1e-3)  # continuing the stated objective: where a finished run's schedule ends
PROMPT = 16  # an on-policy continue batch keeps this many tokens of each row, the student writes the rest
TEACHER_CACHE_ELEMS = 2**26  # teacher logits kept per split up to this many elements (else recomputed)


def reads_own_divergence(objective: KDConvention) -> bool:
    """A run of this objective is read in its own divergence (it samples its own batches, or is not the
    forward KL) rather than in KL(t||s)."""
    return bool(objective.lmbda) or objective.divergence != "forward_kl"


@dataclass
class Tuned:
    model: nn.Module
    curve: list[tuple[int, float, float]]  # (step, train-row agreement, val-row KL) when asked for
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
        return out[:, :-1, : self.vocab].float().to(self.device)  # a teacher over devices: its last one

    @torch.no_grad()
    def _teacher(self, split: str, rows) -> torch.Tensor:
        ids, mask, _ = self.rows[split]
        if self.cache.get(split) is not None:
            return self.cache[split][rows]
        return self._logits(self.teacher, ids[rows], mask[rows])

    @torch.no_grad()
    def chunks(self, split: str, chunk_elems: int = CPU_CHUNK):
        """(teacher, student, labels): fp32 logits of a split's counted row tokens and the tokens they
        predict, a chunk at a time."""
        ids, mask, labels = self.rows[split]
        for i in range(0, len(ids), BATCH):
            rows = slice(i, i + BATCH)
            s = self._logits(self.student, ids[rows], mask[rows])
            t = self._teacher(split, rows)
            # the logits hold positions 0..L-2, each predicting labels[:, 1:], as counted_chunks reads them
            yield from ((tc, sc, y) for (tc, sc), y, _ in counted_chunks(labels[rows], chunk_elems, t, s))

    @torch.no_grad()
    def counted_logits(self, split: str, max_elems: int) -> dict:
        """Student and teacher fp32 logits of a split's counted row tokens and their labels (torch, on
        the probes' device), at most `max_elems` values per model: the first counted tokens in the
        sample's canonical order, read BATCH rows at a time until there are enough."""
        ids, mask, labels = self.rows[split]
        take = max(1, max_elems // max(self.vocab, 1))
        out: dict[str, list] = {"student": [], "teacher": [], "target": []}
        have = 0
        for i in range(0, len(ids), BATCH):
            rows = slice(i, i + BATCH)
            counted = labels[rows, 1:] != IGNORE
            n = int(counted.sum())  # a host read per BATCH rows, until `take` tokens are in
            if n == 0:
                continue
            s = self._logits(self.student, ids[rows], mask[rows])
            t = self._teacher(split, rows)
            keep = min(n, take - have)
            out["student"].append(s[counted][:keep])
            out["teacher"].append(t[counted][:keep].float())
            out["target"].append(labels[rows, 1:][counted][:keep])
            have += keep
            if have >= take:
                break
        if not have:
            empty = torch.zeros(0, self.vocab, device=self.device)
            return {"student": empty, "teacher": empty, "target": empty[:, 0].long()}
        return {k: torch.cat(v) for k, v in out.items()}

    @torch.no_grad()
    def score(self, model: nn.Module, split: str, objective: KDConvention | None = None) -> dict:
        """Per counted token on a split's rows: agreement with the teacher, KL(t||s), NLL (the teacher's
        too), accuracy, and with an `objective`, its own divergence ("div": reverse KL, JSD, ... at its T,
        in fp32)."""
        ids, mask, labels = self.rows[split]
        # tokens, agree, kl, nll, correct, div, the teacher's nll
        sums = torch.zeros(7, dtype=torch.float64, device=self.device)
        model.eval()
        for i in range(0, len(ids), BATCH):
            rows = slice(i, i + BATCH)
            s = self._logits(model, ids[rows], mask[rows])
            t = self._teacher(split, rows)
            target = labels[rows, 1:]
            counted = target != IGNORE
            logp_s, logp_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
            kl = log_prob_kl(logp_t, logp_s)
            index = target.clamp_min(0).unsqueeze(-1)
            nll, nll_t = (-lp.gather(-1, index).squeeze(-1) for lp in (logp_s, logp_t))
            pred = s.argmax(-1)
            div = kl if objective is None else objective_divergence(objective, s, t, "float32", target)
            for k, v in enumerate((counted, pred == t.argmax(-1), kl, nll, pred == target, div, nll_t)):
                sums[k] += (v.double() * counted).sum()
        n = max(float(sums[0]), 1.0)
        tokens, agree, kl, nll, correct, div, nll_t = (float(v) for v in sums)
        out = {
            "agreement": agree / n,
            "kl": kl / n,
            "loss": nll / n,
            "acc": correct / n,
            "teacher_loss": nll_t / n,
        }
        return out if objective is None else {**out, "div": div / n}

    @torch.no_grad()
    def teacher_nll_floor(self, split: str) -> dict:
        """For a teacher read from a top-k capture (the ids outside its top k share the missing mass
        evenly): on a split's rows, per counted token, its NLL as read, its floor (each token outside the
        top k given all of the missing mass, the most the capture allows it) and the student's NLL."""
        ids, mask, labels = self.rows[split]
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # tokens, read, floor, student
        for i in range(0, len(ids), BATCH):
            rows = slice(i, i + BATCH)
            target = labels[rows, 1:]
            counted = target != IGNORE
            y = target[counted][:, None]
            logp_t = F.log_softmax(self._teacher(split, rows)[counted], -1)
            logp_s = F.log_softmax(self._logits(self.student, ids[rows], mask[rows])[counted], -1)
            read = -logp_t.gather(1, y)[:, 0]
            rest = logp_t.amin(-1, keepdim=True)  # the evenly spread missing mass: each row's smallest value
            spread = (logp_t <= rest + 1e-6).sum(-1)  # over this many ids
            outside = -read <= rest[:, 0] + 1e-6
            floor = read - torch.where(outside, spread.double().log(), 0.0)
            for k, v in enumerate((torch.ones_like(read), read, floor, -logp_s.gather(1, y)[:, 0])):
                sums[k] += v.double().sum()
        n = max(float(sums[0]), 1.0)
        tokens, read, floor, student = (float(v) for v in sums)
        return {"tokens": int(tokens), "read": read / n, "floor": floor / n, "student": student / n}

    @torch.no_grad()
    def teacher_mode_drift(self, split: str = "val") -> dict:
        """The teacher left in train mode (dropout on, seeded) against itself in eval mode, on a split's
        rows, per counted token: KL(eval || train), the share of tokens whose argmax differs, and the
        student's KL to each (a student distilled from a train-mode teacher sits closer to it)."""
        ids, mask, labels = self.rows[split]
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)  # tokens, kl, differ, s_eval, s_train
        was = self.teacher.training
        devices = [self.device] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            try:
                for i in range(0, len(ids), BATCH):
                    rows = slice(i, i + BATCH)
                    t_eval = self._teacher(split, rows)
                    self.teacher.train()
                    t_train = self._logits(self.teacher, ids[rows], mask[rows])
                    self.teacher.train(False)
                    s = self._logits(self.student, ids[rows], mask[rows])
                    for chunk, _, _ in counted_chunks(labels[rows], CPU_CHUNK, t_eval, t_train, s):
                        te, tt, sc = (F.log_softmax(x, -1) for x in chunk)
                        parts = (
                            torch.ones(len(sc), device=sc.device),
                            log_prob_kl(te, tt),
                            (te.argmax(-1) != tt.argmax(-1)).float(),
                            log_prob_kl(te, sc),
                            log_prob_kl(tt, sc),
                        )
                        for k, v in enumerate(parts):
                            sums[k] += v.double().sum()
            finally:
                self.teacher.train(was)
        n = max(float(sums[0]), 1.0)
        tokens, kl_t, differ, s_eval, s_train = (float(v) for v in sums)
        return {
            "tokens": int(tokens),
            "teacher_train_mode_kl": kl_t / n,
            "teacher_train_mode_disagreement": differ / n,
            "student_kl_to_eval_teacher": s_eval / n,
            "student_kl_to_train_teacher": s_train / n,
        }

    def _point(self, model: nn.Module, step: int, objective: KDConvention | None = None) -> tuple:
        """A curve point: train-row agreement (the fit), val-row KL or the objective's own divergence
        (what of it generalizes)."""
        val = self.score(model, "val", objective)
        return step, self.score(model, "train")["agreement"], val["div" if objective else "kl"]

    @torch.no_grad()
    def sampled_rows(self, model: nn.Module, temperature: float, seed: int) -> tuple:
        """The train rows continued by `model` itself from their first PROMPT tokens, sampled at
        `temperature` to each row's own length (an on-policy batch as TRL's GKD draws one, prompt masked
        from the loss): (ids, mask, labels), drawn once from the checkpoint a continue run starts at."""
        ids, mask, labels = (v.clone() for v in self.rows["train"])
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1000 + seed)
        model.eval()
        for i in range(0, len(ids), 4 * BATCH):
            rows = slice(i, i + 4 * BATCH)
            for pos in range(PROMPT, ids.shape[1]):  # no KV cache: any model that maps ids -> logits
                out = self._logits(model, ids[rows, : pos + 1], mask[rows, : pos + 1])[:, -1]
                nxt = torch.multinomial(F.softmax(out / temperature, -1), 1, generator=gen)[:, 0]
                ids[rows, pos] = torch.where(mask[rows, pos].bool(), nxt, ids[rows, pos])
        labels = ids.masked_fill(mask == 0, IGNORE)
        labels[:, :PROMPT] = IGNORE
        return ids, mask, labels

    def finetune(
        self,
        objective: KDConvention,
        *,
        steps: int,
        budget_s: float | None,
        seed: int = 0,
        eval_every: int = 0,
        lr: float | None = None,
        resume: Tuned | None = None,
        sampled: tuple | None = None,
        lmbda: float = 0.0,
    ) -> Tuned:
        """A copy of the student fine-tuned on the train rows up to step `steps` or for `budget_s`
        seconds (Adam at `lr`, else at the step size the fit probe chose); `resume` goes on with an
        earlier run (its model, optimizer state, batch order and curve) instead of a fresh copy.
        `sampled` rows (`sampled_rows`) replace the train rows on a `lmbda` share of the steps (an
        on-policy objective); the curve reads val in `reads_own_divergence`'s terms."""
        ids, mask, labels = self.rows["train"]
        curve_objective = objective if reads_own_divergence(objective) else None
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
                curve.append(self._point(model, 0, curve_objective))
        bs = min(BATCH, len(ids))
        start, done, stopped_by = time.perf_counter(), first - 1, "steps"
        with torch.enable_grad():
            for step in range(first, steps + 1):
                model.train()
                idx = torch.randperm(len(ids), generator=gen)[:bs].to(self.device)
                if sampled is not None and float(torch.rand((), generator=gen)) < lmbda:
                    on = [v[idx] for v in sampled]
                    with torch.no_grad():
                        t = self._logits(self.teacher, on[0], on[1])
                    s = self._logits(model, on[0], on[1])
                    loss = objective.token_loss(s, t, on[2][:, 1:])
                else:
                    s = self._logits(model, ids[idx], mask[idx])
                    loss = objective.token_loss(s, self._teacher("train", idx), labels[idx, 1:])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done = step
                out_of_time = budget_s is not None and time.perf_counter() - start > budget_s and step < steps
                if eval_every and (step % eval_every == 0 or step == steps or out_of_time):
                    curve.append(self._point(model, step, curve_objective))
                if out_of_time:
                    stopped_by = "time"
                    break
        return Tuned(model.eval(), curve, done, stopped_by, lr, opt, gen)
