"""What the text of a split looks like, streamed in the main pass: the statistics the text-parity check
compares between train and val, each split kept in two halves so that a split's own halves give the
yardstick a train/val difference is read against (two halves of one corpus differ too).

Per half, fixed-size state on the device: counts of the counted labels per token id (the unigram
distribution, and through a token-class table the rates of upper-case, whitespace, digit and special
tokens), counts of the first and the last attended token of each row (BOS/EOS at row starts and ends),
the shape of the rows (attended length, padding, left padding, rows filled to the end), and, given the
token-class table, how many rows hold no token of each class at all (a step that normalizes some
documents of one split, say lower-cases half of them, empties their rows of a class; a token rate moves
about as much under another mix of documents, a row's all-or-nothing does not). A row's half
is the parity of a seeded hash of its token ids: the same row lands in the same half whatever batch or
loader order it comes in. No host sync per batch.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics.tokens import IGNORE

SHAPE = ("rows", "length", "length_sq", "padded", "left_padded", "full")
HASH_POSITIONS = 1 << 14


class TextStats:
    def __init__(
        self, device: torch.device | str = "cpu", seed: int = 0, classes: np.ndarray | None = None
    ) -> None:
        """`classes`: the [V, C] bool token-class table (`token_classes`), when the tokenizer is known."""
        self.device = torch.device(device)
        self.classes = (
            None if classes is None else torch.as_tensor(classes, dtype=torch.bool, device=self.device)
        )
        width = 0 if classes is None else self.classes.shape[1]
        # per half: rows holding no token of a class, and rows holding any attended token
        self.row_absent = torch.zeros(2, width, dtype=torch.float64, device=self.device)
        self.row_attended = torch.zeros(2, dtype=torch.float64, device=self.device)
        gen = torch.Generator().manual_seed(seed * 31 + 5)
        self.weights = torch.randint(1, 2**31 - 1, (HASH_POSITIONS,), generator=gen).to(self.device)
        self.vocab = 0
        self.counts: dict[str, torch.Tensor] = {}  # "labels" | "first" | "last" -> [2, vocab]
        self.shape = torch.zeros(2, len(SHAPE), dtype=torch.float64, device=self.device)

    def _grow(self, vocab: int) -> None:
        """Widen the count vectors to `vocab` ids (the largest id seen + 1, or the models' vocabulary)."""
        if vocab <= self.vocab:
            return
        for k in ("labels", "first", "last"):
            old = self.counts.get(k)
            new = torch.zeros(2, vocab, dtype=torch.float64, device=self.device)
            if old is not None:
                new[:, : old.shape[1]] = old
            self.counts[k] = new
        self.vocab = vocab

    def update(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, vocab: int) -> None:
        """One batch [B, L] on the pass's device; `vocab`: the compared vocabulary size."""
        self._grow(vocab)
        length = ids.shape[1]
        w = self.weights[torch.arange(length, device=ids.device) % HASH_POSITIONS]
        half = (((ids + 1) * w * mask.long()).sum(1) & 1).long()  # [B] in {0, 1}
        target = labels[:, 1:]
        counted = (target != IGNORE) & (target >= 0) & (target < vocab)
        flat = half[:, None].expand_as(target)[counted] * vocab + target[counted]
        self.counts["labels"].view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
        attended = mask.long()
        n = attended.sum(1)
        has = n > 0
        pos = torch.arange(length, device=ids.device)
        first = torch.where(mask, pos, length).min(1).values.clamp_max(length - 1)
        last = torch.where(mask, pos, -1).max(1).values.clamp_min(0)
        for key, at in (("first", first), ("last", last)):
            tok = ids.gather(1, at[:, None])[:, 0]
            ok = has & (tok >= 0) & (tok < vocab)
            idx = half[ok] * vocab + tok[ok]
            self.counts[key].view(-1).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
        nd = n.double()
        rows = torch.stack(
            [
                torch.ones_like(nd),
                nd,
                nd**2,
                (n < length).double(),
                (has & ~mask[:, 0]).double(),
                (n == length).double(),
            ],
            1,
        )
        self.shape.index_add_(0, half, rows)
        if self.classes is not None:
            table = self.classes
            inside = mask & (ids >= 0) & (ids < table.shape[0])
            hit = (table[ids.clamp(0, table.shape[0] - 1)] & inside[..., None]).any(1)  # [B, C]
            self.row_absent.index_add_(0, half, (~hit).double() * has[:, None])
            self.row_attended.index_add_(0, half, has.double())

    def all_reduce(self) -> None:
        """Sum the state over every rank (the vocabulary is the models', the same on every rank)."""
        import torch.distributed as dist

        for v in (*self.counts.values(), self.shape, self.row_absent, self.row_attended):
            dist.all_reduce(v)

    def compute(self) -> dict:
        """Host copies: counts [2, V] per key, the row-shape sums per half and, given the token classes,
        the rows lacking each class [2, C] and the attended rows [2] per half."""
        out = {k: v.cpu().numpy() for k, v in self.counts.items()}
        out["shape"] = {k: self.shape[:, i].cpu().numpy() for i, k in enumerate(SHAPE)}
        if self.classes is not None:
            out["row_absent"] = self.row_absent.cpu().numpy()  # [2, C] rows with no token of a class
            out["row_attended"] = self.row_attended.cpu().numpy()  # [2] rows with any attended token
        return out


TOKEN_CLASSES = {  # what a text pipeline changes when it prepares train text unlike eval text
    "upper": lambda s: any(c.isupper() for c in s),  # case normalization
    "whitespace": lambda s: bool(s) and s.isspace(),  # indentation / whitespace stripping
    "indent": lambda s: "  " in s or "\t" in s,  # a run of spaces or a tab: indentation kept
    "leading_space": lambda s: s[:1] == " ",  # add_prefix_space, whitespace collapsing
    "newline": lambda s: "\n" in s,  # line structure
    "digit": lambda s: any(c.isdigit() for c in s),
    "non_ascii": lambda s: any(ord(c) > 127 for c in s),  # Unicode normalization
}


def token_classes(strings: list[str], special_ids: set[int] | None = None) -> tuple[list[str], np.ndarray]:
    """Each token id's classes ([V, C] bool) from its decoded text, plus 'special' from the special ids."""
    names = [*TOKEN_CLASSES, "special"]
    table = np.zeros((len(strings), len(names)), dtype=bool)
    for i, s in enumerate(strings):
        for j, test in enumerate(TOKEN_CLASSES.values()):
            table[i, j] = test(s)
    for i in special_ids or ():
        if 0 <= i < len(strings):
            table[i, -1] = True
    return names, table


def js_divergence(a: np.ndarray, b: np.ndarray) -> float:
    """Jensen-Shannon divergence (nats) of two count vectors, each smoothed by half a count per id."""
    n = max(len(a), len(b))
    p, q = (np.pad(v.astype(np.float64), (0, n - len(v))) + 0.5 for v in (a, b))
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    return float(0.5 * (p * np.log(p / m)).sum() + 0.5 * (q * np.log(q / m)).sum())
