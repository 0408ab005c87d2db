"""--data-dir: ImageFolder trees under the student's timm eval transforms, each model normalizing its
own [0, 1] inputs (a ViT beside a ResNet sees its own mean/std)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .data import DataBundle
from .errors import UserError


class NormalizedInput(nn.Module):
    """A model behind its own input normalization: with --data-dir the loader yields [0, 1] tensors.

    Attributes the model has (timm's `pretrained_cfg`, `get_classifier`...) stay reachable through
    the wrapper; `kddoctor_normalization` says that kddoctor, not the data, normalizes.
    """

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.kddoctor_normalization = {"mean": list(mean), "std": list(std)}

    def forward(self, x: torch.Tensor) -> object:
        return self.model((x - self.mean) / self.std)

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("model")
            if inner is None:
                raise
            return getattr(inner, name)


def normalize_inputs(
    bundle: DataBundle, teacher: nn.Module, student: nn.Module
) -> tuple[nn.Module, nn.Module]:
    """Each model behind its own normalization when kddoctor built the transforms; else both unchanged."""
    norm = bundle.normalization
    if not norm:
        return teacher, student
    t_norm = norm.get("teacher", norm["student"])
    return NormalizedInput(teacher, **t_norm), NormalizedInput(student, **norm["student"])


def _has_data_config(model: nn.Module) -> bool:
    cfg = getattr(model, "pretrained_cfg", None)
    return bool(cfg) and "mean" in cfg


def _input_config(model: nn.Module) -> dict:
    """A model's timm data config, with the channel count its first convolution takes."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    chans = conv.in_channels if conv is not None else cfg["input_size"][0]
    cfg["input_size"] = (chans, *cfg["input_size"][1:])
    for key in ("mean", "std"):  # a 1-channel model gets the mean of the RGB constants
        values = [float(v) for v in cfg[key]]
        cfg[key] = values if len(values) == chans else [sum(values) / len(values)] * chans
    return cfg


def _input_notes(root: Path, cfgs: dict[str, dict], teacher_has_cfg: bool) -> list[str]:
    """One resize (the student's) for both; different channel counts cannot share one image."""
    s = cfgs["student"]["input_size"]
    if s[0] not in (1, 3):
        raise UserError(
            f"--data-dir {root}: the student takes {s[0]}-channel inputs; image folders give "
            "1 (grayscale) or 3 (RGB) channels"
        )
    if "teacher" not in cfgs:
        return []
    t = cfgs["teacher"]["input_size"]
    if t[0] != s[0]:
        raise UserError(
            f"--data-dir {root}: the teacher takes {t[0]}-channel inputs but the student {s[0]}-channel "
            "inputs; both see the same images, so build them with the same in_chans"
        )
    if not teacher_has_cfg:
        return ["the teacher has no timm data config: it gets the student's normalization"]
    if tuple(t[1:]) != tuple(s[1:]):
        return [
            f"the teacher's data config says {t[1]}x{t[2]} inputs but the student's {s[1]}x{s[2]}; "
            f"both get the student's {s[1]}x{s[2]} resize and crop"
        ]
    return []


def _raw_transform(cfg: dict):
    """The student's eval transform (resize, crop, to tensor) without Normalize; grayscale for 1 channel."""
    from timm.data import create_transform
    from torchvision import transforms

    timm_tf = create_transform(**cfg, is_training=False)
    steps = [t for t in timm_tf.transforms if not isinstance(t, transforms.Normalize)]
    if cfg["input_size"][0] == 1:
        steps.insert(0, transforms.Grayscale(1))
    return transforms.Compose(steps)


def _align_classes(root: Path, train, val) -> list[str]:
    """val/ may lack some of train/'s classes (its labels keep train/'s indices), never add one."""
    extra = [c for c in val.classes if c not in train.class_to_idx]
    if extra:
        s = "s" if len(extra) > 1 else ""
        raise UserError(
            f"--data-dir {root}: val/ has class folder{s} {', '.join(map(repr, extra))} that train/ lacks; "
            "add it to train/ or remove it from val/"
        )
    if val.classes == train.classes:
        return []
    lacking = [c for c in train.classes if c not in val.class_to_idx]
    to_train = [train.class_to_idx[c] for c in val.classes]
    val.samples = val.imgs = [(path, to_train[t]) for path, t in val.samples]
    val.targets = [t for _, t in val.samples]
    val.classes, val.class_to_idx = list(train.classes), dict(train.class_to_idx)
    return [f"val/ has no folder for class(es) {', '.join(map(repr, lacking))}: no val samples of them"]


def image_folder(
    root: str | Path,
    student: nn.Module,
    *,
    teacher: nn.Module | None = None,
    batch_size: int,
    workers: int = 2,
    pin_memory: bool = False,
) -> DataBundle:
    """DIR/train/<class>/... and DIR/val/<class>/... as [0, 1] tensors under the student's resize and crop.

    The bundle's `normalization` holds each model's own mean/std (its timm data config), applied by
    `normalize_inputs`; a teacher without a timm config gets the student's.
    """
    from torchvision.datasets import ImageFolder

    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(
                f"--data-dir {root}: no {split}/ folder; expected {root}/train/<class>/... "
                f"and {root}/val/<class>/..."
            )
    cfgs = {"student": _input_config(student)}
    teacher_has_cfg = teacher is not None and _has_data_config(teacher)
    if teacher is not None:
        cfgs["teacher"] = _input_config(teacher)
        if not teacher_has_cfg:  # nothing to go by: the student's normalization, as before
            cfgs["teacher"].update(mean=cfgs["student"]["mean"], std=cfgs["student"]["std"])
    notes = _input_notes(root, cfgs, teacher_has_cfg)
    tf = _raw_transform(cfgs["student"])
    try:
        train = ImageFolder(str(root / "train"), transform=tf)
        val = ImageFolder(str(root / "val"), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"--data-dir {root}: {e}") from e
    notes += _align_classes(root, train, val)
    mk = lambda ds: torch.utils.data.DataLoader(  # noqa: E731
        ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory
    )
    return DataBundle(
        {"train": mk(train), "val": mk(val)},
        num_classes=len(train.classes),
        class_names=list(train.classes),
        normalization={role: {"mean": c["mean"], "std": c["std"]} for role, c in cfgs.items()},
        notes=notes,
    )
