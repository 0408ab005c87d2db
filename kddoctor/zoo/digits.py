"""Small, deterministic training loops used by the demo and the scenario kit (real digits data)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..convention import KDConvention

# Pixel statistics of the digits training split after /16 (computed once, see digits_arrays).
DIGITS_MEAN = 0.3054
DIGITS_STD = 0.3761


def digits_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 digits -> (X_train, y_train, X_val, y_val), 1437/360, in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return x_tr, y_tr, x_va, y_va


def noisy_labels(y: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Replace `fraction` of the labels with a different class, deterministically."""
    if fraction <= 0:
        return y
    rng = np.random.default_rng(seed + 17)
    y = y.copy()
    idx = rng.choice(len(y), int(round(fraction * len(y))), replace=False)
    y[idx] = (y[idx] + rng.integers(1, 10, len(idx))) % 10
    return y


def normalize(x: np.ndarray, mean: float = DIGITS_MEAN, std: float = DIGITS_STD) -> np.ndarray:
    return ((x - mean) / std).astype(np.float32)


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i : i + batch_size]


def train_supervised(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Plain cross-entropy training with AdamW and a cosine schedule."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for _ in range(epochs):
        for idx in _batches(len(x), batch_size, gen):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    convention: KDConvention | None = None,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    batch_size: int = 64,
    seed: int = 0,
    teacher_train_mode: bool = False,
    augment: bool = False,
    teacher_input=None,
    student_input=None,
    loss_fn=None,
) -> nn.Module:
    """A standard KD loop (teacher frozen, in eval mode unless `teacher_train_mode` plants that bug).

    `teacher_input` / `student_input` map the batch to what each model sees (per-model normalization);
    `loss_fn(s, t, y)` replaces `convention.loss` (a KD framework's objective, reproduced)."""
    convention = convention or KDConvention()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    teacher.train(teacher_train_mode)
    student.train()
    for _ in range(epochs):
        for idx in _batches(len(x), batch_size, gen):
            xb = x[idx]
            if augment:
                shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            with torch.no_grad():
                t = teacher(teacher_input(xb) if teacher_input else xb)
            s = student(student_input(xb) if student_input else xb)
            loss = (loss_fn or convention.loss)(s, t, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    teacher.eval()
    return student.eval()
