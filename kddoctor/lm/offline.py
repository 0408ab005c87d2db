"""A teacher that does not fit beside the student: its outputs captured offline, top-k per token
(`--teacher topk:FILE`), read back as a teacher module: DistillKit's own capture (a directory of
parquet files or one of them, `distillkit_capture`), or the same facts in plain arrays.

The array file (`.safetensors` or `.npz`) holds, for N captured rows of up to L tokens:

- `input_ids` [N, L] int: each row's tokens (right-padded with any id; `attention_mask` [N, L] marks
  the real ones, else every position is real);
- `top_ids` [N, L, k] int and `top_logprobs` [N, L, k] float: at each position, the teacher's k most
  likely next tokens and their log-probabilities at T 1 (over its whole vocabulary; -inf where a position
  has fewer than k, as DistillKit pads them);
- optional `vocab_size` (scalar): the teacher's vocabulary.

Rows are matched to the batches by content, not by order: a batch row is the capture row whose tokens
it starts with (the probes' rows are prefixes of the pass's rows). A batch row no capture row matches
is refused in one line: the capture was made on other tokens. The teacher's distribution at a position
is its top k log-probabilities and the missing mass spread evenly over the other ids (so every
divergence and metric is defined; the top-k checks read how much mass that is).

A capture whose rows match but whose log-probabilities are not those rows' (top-k arrays reordered apart
from `input_ids`, or written one position off) is refused by content too: over its first
`ALIGN_POSITIONS` captured positions, a teacher's top k holds the token it was asked to predict (the
next one) more often than the token at its own position or the one after next, and predicts it no worse
than a uniform guess. `Alignment` reads both and names which way the capture is off.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError

PREFIX = 8  # tokens of a row's start that index it (a longer match is then checked in full)
ALIGN_POSITIONS = 4096  # captured positions the alignment is read on (it is decided once, then not read)
ALIGN_MIN = 256  # ... and at least this many before it decides (a smaller capture is not read)
SHIFTS = (0, 1, 2)  # which token a position's top k holds: its own, the next (aligned), the one after


class Alignment:
    """Which token each captured position's top k holds (its own, the next, the one after next) and the
    capture's log-probability of the next one, summed over the first ALIGN_POSITIONS positions; decided
    once: a refusal in one line when another position fits better than the next token, or when the
    capture predicts the next tokens worse than a uniform guess and no better than the other positions
    (its rows were not captured on these tokens)."""

    def __init__(self, path: Path, vocab: int) -> None:
        self.path, self.vocab = path, vocab
        self.hits, self.positions, self.nll = dict.fromkeys(SHIFTS, 0), 0, 0.0
        self.decided = False

    def add(self, tokens: torch.Tensor, top: torch.Tensor, logp: torch.Tensor) -> None:
        """One row: its [n] tokens, [n, k] captured ids and [n, V] log-probabilities (positions with data)."""
        if self.decided:
            return
        n = len(tokens) - max(SHIFTS)
        if n <= 0:
            return
        for s in SHIFTS:
            self.hits[s] += int((top[:n] == tokens[s : s + n, None]).any(-1).sum())
        self.nll -= float(logp[:n].gather(1, tokens[1 : 1 + n, None]).sum())
        self.positions += n
        if self.positions >= ALIGN_POSITIONS:
            self.decide()

    def decide(self) -> None:
        """Refuse a misaligned capture (UserError), once enough positions were read; else stop reading."""
        if self.decided or self.positions < ALIGN_MIN:
            return
        self.decided = True
        n = self.positions
        rate = {s: h / n for s, h in self.hits.items()}
        nll, uniform = self.nll / n, math.log(self.vocab)
        best = max(SHIFTS, key=lambda s: (rate[s], s == 1))
        where = f"--teacher topk:{self.path}: on {n:,} captured positions"
        holds = (
            f"its top k holds the next token at {rate[1]:.0%} of them, the token at the position itself at "
            f"{rate[0]:.0%}, the one after next at {rate[2]:.0%}"
        )
        if best != 1 and rate[best] >= 1.5 * rate[1] + 0.02:
            off = "one position late" if best == 0 else "one position early"
            raise UserError(
                f"{where} {holds}: its log-probabilities are written {off} against input_ids; position i "
                "must hold the teacher's prediction of token i+1 (its logits[:, i]), as capture() writes them"
            )
        if nll > uniform + 0.25 and rate[1] < 1.5 * max(rate[0], rate[2]) + 0.02:
            raise UserError(
                f"{where} it predicts the next token worse than a uniform guess ({nll:.2f} vs "
                f"{uniform:.2f} nats/token) and {holds}: its top_ids/top_logprobs rows are not its "
                "input_ids rows (reordered apart, or captured on other text); recapture them together"
            )


def _key(tokens: list[int]) -> str:
    return hashlib.blake2b(np.asarray(tokens[:PREFIX], dtype=np.int64).tobytes(), digest_size=8).hexdigest()


def _read(path: Path) -> dict[str, np.ndarray]:
    from . import distillkit_capture

    if path.exists() and distillkit_capture.is_distillkit(path):
        return distillkit_capture.read(path, f"topk:{path}")
    if not path.is_file():
        raise UserError(
            f"--teacher topk:{path}: no such file (a .safetensors or .npz capture, or DistillKit's parquet "
            "capture directory)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # a damaged or foreign file
        why = (
            "numpy reads it as pickled objects, which kddoctor never loads"
            if "pickle" in str(e)
            else f"{type(e).__name__}: {e}"
        )
        raise UserError(
            f"--teacher topk:{path}: not a readable capture ({why}); write the arrays with numpy.savez or "
            "safetensors, or point at DistillKit's parquet capture"
        ) from None


def _fill_empty_slots(top: np.ndarray, logp: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each position's kept mass, whether it holds no captured log-probability at all (the last token of
    a DistillKit row, padding: read as uniform) and how many ids it holds; a slot without one (-inf:
    fewer than k captured, its id arbitrary) repeats the position's most likely captured entry, so
    writing the slots back is exact."""
    empty = ~np.isfinite(logp)
    mass = np.where(empty, 0.0, np.exp(np.where(empty, 0.0, logp))).sum(-1)
    if empty.any():
        best = np.argmax(np.where(empty, -np.inf, logp), -1)[..., None]
        top = np.where(empty, np.take_along_axis(np.where(empty, 0, top), best, -1), top)
        logp = np.where(empty, np.take_along_axis(np.where(empty, 0.0, logp), best, -1), logp)
    return top, logp, mass.astype(np.float32), empty.all(-1), (~empty).sum(-1)


def _digest(path: Path) -> bytes:
    """The capture's content hash (every file of a capture directory, in name order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.digest()


class OfflineTeacher(nn.Module):
    """The captured teacher: forward(input_ids, attention_mask) -> [B, L, vocab] logits from the capture."""

    def __init__(self, path: str | Path, vocab: int) -> None:
        super().__init__()
        self.path = Path(path)
        arr = _read(self.path)
        missing = [k for k in ("input_ids", "top_ids", "top_logprobs") if k not in arr]
        if missing:
            raise UserError(f"--teacher topk:{self.path}: the capture has no {', '.join(missing)} array")
        ids, top, logp = arr["input_ids"], arr["top_ids"], arr["top_logprobs"]
        if top.shape != logp.shape or top.shape[:2] != ids.shape or top.ndim != 3:
            raise UserError(
                f"--teacher topk:{self.path}: top_ids {list(top.shape)} and top_logprobs {list(logp.shape)} "
                f"must both be [rows, tokens, k] over input_ids {list(ids.shape)}"
            )
        self.vocab = int(arr["vocab_size"]) if "vocab_size" in arr else vocab
        top, logp, mass, nodata, kept = _fill_empty_slots(top, logp.astype(np.float32))
        self.mass, self.nodata = torch.from_numpy(mass), torch.from_numpy(nodata)
        self.kept = torch.from_numpy(kept)  # ids captured at each position (k, or fewer)
        if int(top.max()) >= self.vocab:
            raise UserError(
                f"--teacher topk:{self.path}: token id {int(top.max())} is beyond the vocabulary "
                f"({self.vocab})"
            )
        mask = arr.get("attention_mask", np.ones_like(ids)).astype(bool)
        if "vocab_size" in arr and int(ids[mask].max(initial=0)) >= self.vocab:
            raise UserError(
                f"--teacher topk:{self.path}: the capture's vocabulary is {self.vocab:,} (its vocab_size, "
                f"DistillKit's d) but its rows hold token id {int(ids[mask].max()):,}: ids at or above it "
                f"were lost when it was written; recapture with d (vocab_size) at least "
                f"{int(ids[mask].max()) + 1:,}, the tokenizer's vocabulary"
            )
        self.k = top.shape[2]
        self.top_ids = torch.from_numpy(top.astype(np.int64))
        self.top_logp = torch.from_numpy(logp)
        self.rows: dict[str, list[tuple[int, list[int]]]] = {}
        for i in range(len(ids)):
            tokens = ids[i][mask[i]].tolist()
            self.rows.setdefault(_key(tokens), []).append((i, tokens))
        self.hits = 0
        self.alignment = Alignment(self.path, self.vocab)
        # the capture's content in the state dict, so the teacher-output cache keys on the file itself
        digest = _digest(self.path)
        self.register_buffer("capture_digest", torch.tensor(list(digest), dtype=torch.uint8))

    @property
    def partial_k(self) -> int | None:
        """k when the capture holds fewer ids than the vocabulary (its whole distribution is unknown)."""
        return self.k if self.k < self.vocab else None

    def _row(self, tokens: list[int]) -> int | None:
        for i, stored in self.rows.get(_key(tokens), []):
            if stored[: len(tokens)] == tokens:
                return i
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        ids = input_ids.cpu()
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.cpu() > 0
        b, length = ids.shape
        out = torch.empty(b, length, self.vocab, dtype=torch.float32)
        for r in range(b):
            row = ids[r][mask[r]]
            tokens = row.tolist()
            i = self._row(tokens)
            if i is None:
                raise UserError(
                    f"--teacher topk:{self.path}: no captured row holds the tokens of a batch row (it starts "
                    f"{tokens[:6]}): the capture was made on other token ids or rows; capture the teacher "
                    "on these very batches (same tokenizer, template and max_length)"
                )
            self.hits += 1
            n = min(len(tokens), self.top_ids.shape[1], length)
            lp = self.top_logp[i, :n]
            rest = (
                (1 - self.mass[i, :n]).clamp_min(1e-12) / (self.vocab - self.kept[i, :n]).clamp_min(1)
            ).log()
            lp = torch.where(self.nodata[i, :n, None], rest[:, None], lp)  # no capture there: uniform
            out[r].fill_(math.log(1.0 / self.vocab))
            out[r, :n] = rest[:, None]
            out[r, :n].scatter_(-1, self.top_ids[i, :n], lp)
            if not self.alignment.decided:  # read on the positions before the first without a capture
                m = int((~self.nodata[i, :n]).long().cumprod(0).sum())
                self.alignment.add(row[:m].long(), self.top_ids[i, :m], out[r, :m])
            # an attended position past the capture, or padding: uniform (never counted when padding)
        return out.to(input_ids.device)


def capture(teacher: nn.Module, batches, k: int, path: str | Path) -> Path:
    """Write a teacher's top-k capture of collator batches (what `topk:FILE` reads): for tests, and for
    a teacher run once on a machine it fits on."""
    from .engine import adapt, lm_logits

    ids_all, mask_all, top_all, logp_all = [], [], [], []
    teacher.eval()
    with torch.no_grad():
        for index, batch in enumerate(batches):
            tb = adapt(batch, "capture", index)
            out = lm_logits(teacher(input_ids=tb.ids, attention_mask=tb.mask))
            logp = torch.log_softmax(out.float(), -1)
            top = logp.topk(k, -1)
            ids_all.append(tb.ids)
            mask_all.append(tb.mask)
            top_all.append(top.indices)
            logp_all.append(top.values)
    width = max(x.shape[1] for x in ids_all)

    def cat(parts, fill):
        pad = lambda p: (0, 0) * (p.ndim - 2) + (0, width - p.shape[1])  # noqa: E731
        return torch.cat([torch.nn.functional.pad(p, pad(p), value=fill) for p in parts])

    arrays = {
        "input_ids": cat(ids_all, 0).numpy(),
        "attention_mask": cat([m.long() for m in mask_all], 0).numpy(),
        "top_ids": cat(top_all, 0).numpy(),
        "top_logprobs": cat(logp_all, 0.0).numpy(),
    }
    path = Path(path)
    np.savez(path, **arrays)
    return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")
