"""The embedded default: a real CNN teacher/student pair on scikit-learn's digits.

The teacher is trained on all 1,437 training digits; the student is distilled on only 240 of them
for many epochs without weight decay, which leaves the classic symptom: low training loss, high
validation loss. The pair is built once and cached (KDDOCTOR_CACHE, default ~/.cache/kddoctor).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._cache import cache_dir
from .._io import atomic_write
from . import digits as _train

DEMO_STUDENT_SUBSET = 240  # distillation set of the demo student: too few samples for its size
DEMO_RECIPE = {
    "teacher_epochs": 30,
    "student_epochs": 150,
    "subset": DEMO_STUDENT_SUBSET,
    "alpha": 0.7,
    "temperature": 4.0,
    "student_wd": 0.0,
    "version": 1,
}


class _ConvNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i == 0:
                layers.append(nn.MaxPool2d(2))  # 8x8 -> 4x4
            c_in = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


def teacher_cnn(num_classes: int = 10) -> nn.Module:
    """Teacher: three conv blocks (32-64-128) with BatchNorm, dropout before the classifier."""
    return _ConvNet((32, 64, 128), num_classes, dropout=0.2)


def student_cnn(num_classes: int = 10, width: int = 24) -> nn.Module:
    """Student: two conv blocks (width, 2*width) with BatchNorm."""
    return _ConvNet((width, 2 * width), num_classes)


def student_mlp(num_classes: int = 10, hidden: int = 128) -> nn.Module:
    """Student: a one-hidden-layer MLP on the flattened 8x8 image."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def _tensors(x, y) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


class _Augmenting:
    """A re-iterable loader that draws a fresh random 1-pixel shift for every batch of every pass."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shift: int, seed: int) -> None:
        self.x, self.y, self.batch_size, self.shift = (
            torch.from_numpy(x),
            torch.from_numpy(y),
            batch_size,
            shift,
        )
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            xb = self.x[i : i + self.batch_size]
            dx, dy = torch.randint(-self.shift, self.shift + 1, (2,), generator=self.gen).tolist()
            yield torch.roll(xb, shifts=(dx, dy), dims=(2, 3)), self.y[i : i + self.batch_size]


VAL_TRANSFORMS = {
    "standard": lambda x: _train.normalize(x),
    "none": lambda x: x,  # the val transform dropped the Normalize that train used
    "div255": lambda x: _train.normalize(x * 16 / 255),  # raw pixels scaled /255 instead of /16
    "wrongstats": lambda x: _train.normalize(x, 0.5, 0.5),  # another data set's mean and std
}


def digits_loaders(
    train_subset: int | None = None,
    batch_size: int = 128,
    val_normalization: str = "standard",
    label_noise: float = 0.0,
    seed: int = 0,
    train_augment: int = 0,
    sort_by_class: bool = False,
    with_train_eval: bool = False,
) -> dict:
    """Data factory for the digits pair: train (the student's distillation set) and val.

    `val_normalization` plants a preprocessing mismatch ("none": val pixels stay in [0, 1]; "div255":
    raw pixels divided by 255 instead of 16). `label_noise` flips that fraction of the train labels
    (deterministically). `seed` picks the train/val split. `train_augment` makes the train loader shift
    every batch by up to that many pixels at random (a fresh draw each pass); `with_train_eval` then adds
    the un-augmented `train_eval` loader. `sort_by_class` serves both splits in class order (as an
    ImageFolder with shuffle=False does).
    """
    x_tr, y_tr, x_va, y_va = _train.digits_arrays(seed)
    if train_subset:
        x_tr, y_tr = x_tr[:train_subset], y_tr[:train_subset]
    y_tr = _train.noisy_labels(y_tr, label_noise, seed)
    x_tr = _train.normalize(x_tr)
    x_va = VAL_TRANSFORMS[val_normalization](x_va)
    if sort_by_class:
        o_tr, o_va = np.argsort(y_tr, kind="stable"), np.argsort(y_va, kind="stable")
        x_tr, y_tr, x_va, y_va = x_tr[o_tr], y_tr[o_tr], x_va[o_va], y_va[o_va]
    mk = lambda x, y: torch.utils.data.DataLoader(_tensors(x, y), batch_size=batch_size)  # noqa: E731
    out = {
        "train": _Augmenting(x_tr, y_tr, batch_size, train_augment, seed)
        if train_augment
        else mk(x_tr, y_tr),
        "val": mk(x_va, y_va),
        "num_classes": 10,
        "class_names": [str(i) for i in range(10)],
    }
    if with_train_eval:
        out["train_eval"] = mk(x_tr, y_tr)
    return out


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a per-process temporary name, then rename: concurrent builds never see half a file."""
    atomic_write(path.parent, {path.name: lambda fh: torch.save(obj, fh)})


def recipe_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


TEACHER_KEY = recipe_key({"epochs": DEMO_RECIPE["teacher_epochs"], "v": 2})


def teacher_key(split_seed: int = 0) -> str:
    """Cache key of a digits teacher (the demo's own teacher, split 0, keeps its historical key)."""
    if split_seed == 0:
        return TEACHER_KEY
    return recipe_key({"epochs": DEMO_RECIPE["teacher_epochs"], "v": 2, "split": split_seed})


def build_teacher(root: Path | None = None, *, split_seed: int = 0) -> tuple[Path, nn.Module]:
    """Train (or reuse) the digits teacher on all 1,437 training digits of split `split_seed`."""
    root = (root or cache_dir()) / f"teacher-{teacher_key(split_seed)}"
    t_path = root / "teacher.pt"
    torch.manual_seed(split_seed)  # the same initial weights on every machine
    teacher = teacher_cnn()
    if t_path.is_file():
        teacher.load_state_dict(torch.load(t_path, weights_only=True)["state_dict"])
        return t_path, teacher.eval()
    root.mkdir(parents=True, exist_ok=True)
    x, y = digits_train_tensors(split_seed)
    _train.train_supervised(teacher, x, y, epochs=DEMO_RECIPE["teacher_epochs"], seed=split_seed)
    atomic_save({"state_dict": teacher.state_dict(), "arch": "kddoctor.zoo.demo:teacher_cnn"}, t_path)
    return t_path, teacher.eval()


def digits_train_tensors(split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x_tr, y_tr, _, _ = _train.digits_arrays(split_seed)
    return torch.from_numpy(_train.normalize(x_tr)), torch.from_numpy(y_tr)


def build_demo_pair(root: Path | None = None) -> tuple[Path, Path]:
    """Train (or reuse) the demo teacher and student; returns their checkpoint paths."""
    t_path, teacher = build_teacher(root)
    s_path = (
        (root or cache_dir()) / f"demo-{recipe_key({**DEMO_RECIPE, 'teacher': TEACHER_KEY})}" / "student.pt"
    )
    if s_path.is_file():
        return t_path, s_path
    s_path.parent.mkdir(parents=True, exist_ok=True)
    x, y = digits_train_tensors()
    n = DEMO_RECIPE["subset"]
    torch.manual_seed(1)
    student = _train.distill(
        student_cnn(),
        teacher,
        x[:n],
        y[:n],
        epochs=DEMO_RECIPE["student_epochs"],
        convention=demo_convention(),
        weight_decay=DEMO_RECIPE["student_wd"],
        seed=1,
    )
    atomic_save({"model": student.state_dict(), "epoch": DEMO_RECIPE["student_epochs"]}, s_path)
    return t_path, s_path


def demo_convention():
    """The KD convention the demo student was trained with (and that the demo states)."""
    from ..convention import KDConvention

    return KDConvention.from_alpha(DEMO_RECIPE["alpha"], temperature=DEMO_RECIPE["temperature"])


def demo_command(t_path: Path, s_path: Path) -> list[str]:
    """The `kddoctor diagnose` arguments the demo runs (shown in the README and the report)."""
    return [
        "--teacher",
        "kddoctor.zoo.demo:teacher_cnn",
        "--teacher-ckpt",
        str(t_path),
        "--student",
        "kddoctor.zoo.demo:student_cnn",
        "--student-ckpt",
        str(s_path),
        "--data",
        "kddoctor.zoo.demo:digits_loaders",
        "--data-arg",
        f"train_subset={DEMO_STUDENT_SUBSET}",
        "--alpha",
        str(DEMO_RECIPE["alpha"]),
        "--temperature",
        str(DEMO_RECIPE["temperature"]),
    ]
