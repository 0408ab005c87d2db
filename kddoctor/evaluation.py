"""What every check reads: both models, the per-split results of the main pass, and the config."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import DiagnoseConfig
from .engine import SplitResult

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.Dropout1d)


def has_mode_layers(model: nn.Module) -> bool:
    """True when train() and eval() behave differently (BatchNorm or dropout)."""
    return any(isinstance(m, _NORM_TYPES) for m in model.modules())


@dataclass
class Evaluation:
    teacher: nn.Module
    student: nn.Module
    config: DiagnoseConfig
    device: torch.device
    num_classes: int
    splits: dict[str, SplitResult]
    class_names: list[str] | None = None
    teacher_spec: str = "teacher"
    student_spec: str = "student"
    memo: dict = field(default_factory=dict)  # intermediate results shared between checks
    progress: object = None  # the run's rich progress (or None): probes show their steps on it

    @property
    def probe_budget(self) -> float | None:
        """Seconds each fine-tuning probe may run (config.Budgets.probe_budget of the main pass)."""
        return self.config.budgets.probe_budget(sum(r.seconds for r in self.splits.values()))

    @contextlib.contextmanager
    def progress_task(self, label: str, total: int) -> Iterator[Callable[[], None]]:
        """A progress line for one probe (steps/s and ETA); yields the function that advances it."""
        if self.progress is None:
            yield lambda: None
            return
        task = self.progress.add_task(f"probe: {label}", total=total)
        try:
            yield lambda: self.progress.advance(task)
        finally:
            self.progress.remove_task(task)

    @property
    def train(self) -> SplitResult:
        """The train side of every check: `train_eval` (training data under inference transforms) when
        the factory gives it, else the train loader itself."""
        return self.splits.get("train_eval") or self.splits["train"]

    def side(self, split: str) -> SplitResult | None:
        """A split's result as the checks read it: "train" means the train side (see `train`)."""
        return self.train if split == "train" else self.splits.get(split)

    @property
    def train_source(self) -> str:
        return "train_eval" if "train_eval" in self.splits else "train"

    @property
    def train_augmented(self) -> bool:
        """The train side varies between two passes over the same samples (random augmentation)."""
        return (self.train.augmented or 0.0) > 0.5

    @property
    def val(self) -> SplitResult:
        return self.splits["val"]

    @property
    def capabilities(self) -> set[str]:
        caps = set(self.splits)
        if all(
            self.splits[s].features.get(m) is not None
            for s in ("train", "val")
            for m in ("teacher", "student")
        ):
            caps.add("features")
        if self.train.cache_x is not None and self.val.cache_x is not None:
            caps.add("cache")
        if has_mode_layers(self.student) or has_mode_layers(self.teacher):
            caps.add("norm_layers")
        if any(True for _ in self.student.parameters()):
            caps.add("trainable")
        return caps
