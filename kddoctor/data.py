"""FACTORY parsing, batch adapters and ImageFolder trees with the student's timm transforms."""

from __future__ import annotations

import ast
import inspect
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._imports import resolve_callable
from .errors import UserError

INPUT_KEYS = ("image", "input", "inputs", "pixel_values", "x")
TARGET_KEYS = ("label", "target", "labels", "targets", "y")
SPLITS = ("train", "val", "train_eval")


@dataclass
class DataBundle:
    """The loaders of one diagnosis, plus what the factory says about the classes."""

    splits: dict[str, Iterable]
    num_classes: int | None = None
    class_names: list[str] | None = None
    # role -> {"mean": [...], "std": [...]} when kddoctor, not the loader, normalizes (--data-dir)
    normalization: dict[str, dict] | None = None
    notes: list[str] = field(default_factory=list)  # what kddoctor decided about the data, in sentences


def parse_data_args(pairs: Iterable[str]) -> dict:
    """['n=3', 'name=digits'] -> {'n': 3, 'name': 'digits'}; values are Python literals or strings."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--data-arg {pair!r} is not key=value with an identifier key")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            out[key] = raw
    return out


def from_mapping(obj: object, source: str) -> DataBundle:
    """Validate what a factory returned: a mapping with at least train and val."""
    if not isinstance(obj, Mapping):
        raise UserError(
            f"data factory {source} returned {type(obj).__name__}; "
            "return a dict with 'train' and 'val' loaders"
        )
    missing = [k for k in ("train", "val") if k not in obj]
    if missing:
        raise UserError(
            f"data factory {source} returned no {' or '.join(missing)!s} loader "
            f"(keys: {', '.join(map(str, obj)) or 'none'}); return {{'train': ..., 'val': ...}}"
        )
    splits = {}
    for k in SPLITS:
        if k in obj and obj[k] is not None:
            if not isinstance(obj[k], Iterable) or isinstance(obj[k], str | bytes | Mapping):
                raise UserError(
                    f"data factory {source}: '{k}' is a {type(obj[k]).__name__}, "
                    "not a DataLoader or iterable of batches"
                )
            splits[k] = obj[k]
    names = obj.get("class_names")
    nc = obj.get("num_classes")
    if nc is not None and (not isinstance(nc, int) or nc < 1):
        raise UserError(f"data factory {source}: num_classes must be a positive int, got {nc!r}")
    return DataBundle(splits, num_classes=nc, class_names=[str(n) for n in names] if names else None)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch: a factory's random_split or shuffled sampler repeats with --seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_factory(ref: str, data_args: dict | None = None, seed: int | None = None) -> DataBundle:
    """Call a FACTORY (file.py:FUNC or module:FUNC) with the --data-arg keywords, after seeding every RNG."""
    fn = resolve_callable(ref, "data FACTORY")
    data_args = data_args or {}
    try:
        inspect.signature(fn).bind(**data_args)
    except TypeError as e:
        raise UserError(f"data FACTORY {ref!r} does not take these --data-arg values: {e}") from e
    except ValueError:
        pass
    if seed is not None:
        seed_everything(seed)
    try:
        obj = fn(**data_args)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"data FACTORY {ref!r} raised {type(e).__name__}: {e}") from e
    return from_mapping(obj, repr(ref))


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


def split_batch(
    batch: object,
    split: str,
    index: int,
    *,
    class_names: list[str] | None = None,
    num_classes: int | None = None,
    notes: set[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from a tuple/list batch or a mapping batch; targets become class indices [B].

    Labels that are not plain indices are read as class indices, and how is added to `notes` as one
    sentence per interpretation ("val labels given as [B, 1] floats: thresholded at 0.5").
    """
    if isinstance(batch, Mapping):
        if "input_ids" in batch:
            raise UserError(
                f"{split} batch {index} holds input_ids: a causal-LM batch; pass --task causal-lm"
            )
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in TARGET_KEYS if k in batch), None)
        if x is None or y is None:
            raise UserError(
                f"{split} batch {index} is a mapping with keys {sorted(map(str, batch))}; "
                f"expected one of {INPUT_KEYS} and one of {TARGET_KEYS}"
            )
    elif isinstance(batch, list | tuple) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    else:
        raise UserError(
            f"{split} batch {index} is a {type(batch).__name__}; "
            "yield (inputs, targets) tuples or dicts with image/label keys"
        )
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{split} batch {index}: inputs are {type(x).__name__}, not a tensor")
    y, how = _class_indices(y, len(x), f"{split} batch {index}", class_names, num_classes)
    if how and notes is not None:
        notes.add(f"{split} labels given as {how}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise UserError(
            f"{split} batch {index}: targets of shape {list(y.shape)} do not match "
            f"{x.shape[0]} inputs; use class indices of shape [B]"
        )
    return x, y


def _class_indices(
    y: object, n: int, where: str, class_names: list[str] | None, num_classes: int | None
) -> tuple[torch.Tensor, str | None]:
    """Labels -> class indices, and how they were read (None for plain integer indices)."""
    if isinstance(y, np.ndarray) and y.dtype.kind in "USO":
        y = y.tolist()
    if isinstance(y, list | tuple) and y and all(isinstance(v, str) for v in y):
        return _indices_of_names(list(y), where, class_names), "strings: mapped through class_names"
    if not isinstance(y, torch.Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{where}: labels of type {type(y).__name__} are not class indices ({e})") from e
    if y.ndim == 2 and y.shape == (n, 1):
        return _column_indices(y[:, 0], "[B, 1]", num_classes)
    if y.ndim == 2 and y.shape[0] == n and y.is_floating_point():
        return y.argmax(1), f"[B, {y.shape[1]}] one-hot or soft labels: the class with the most mass"
    if y.ndim == 1 and (y.is_floating_point() or y.dtype == torch.bool):
        return _column_indices(y, "[B]", num_classes)
    return y, None


def _column_indices(v: torch.Tensor, shape: str, num_classes: int | None) -> tuple[torch.Tensor, str]:
    """One label per sample: integers as they are, probabilities of a 2-class model thresholded at 0.5."""
    if not v.is_floating_point():
        kind = "booleans" if v.dtype == torch.bool else "integers"
        return v.long(), f"{shape} {kind}: read as class indices"
    in_unit = bool(((v >= 0) & (v <= 1)).all())
    integral = bool((v == v.round()).all())
    if in_unit and (num_classes == 2 or (num_classes is None and not integral)):
        return (v >= 0.5).long(), f"{shape} floats: thresholded at 0.5"
    if integral:
        return v.long(), f"{shape} floats: read as class indices"
    return v.round().long(), f"{shape} floats: rounded to class indices"


def _indices_of_names(names: list[str], where: str, class_names: list[str] | None) -> torch.Tensor:
    if not class_names:
        raise UserError(
            f"{where}: labels are strings ({names[0]!r}, ...) but the data gives no class_names; "
            "return 'class_names' from the data factory or yield class indices"
        )
    index = {name: i for i, name in enumerate(class_names)}
    unknown = next((name for name in names if name not in index), None)
    if unknown is not None:
        known = ", ".join(map(repr, class_names[:5])) + (", ..." if len(class_names) > 5 else "")
        raise UserError(
            f"{where}: label {unknown!r} is not one of the class_names ({known}); fix one of them"
        )
    return torch.tensor([index[name] for name in names], dtype=torch.long)


def iter_batches(
    loader: Iterable,
    split: str,
    limit: int | None = None,
    rank: int = 0,
    world: int = 1,
    **labels,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Adapted batches of one split, trimmed to `limit` samples; rank r of `world` takes batches i%world==r.

    A loader that raises mid-way becomes a UserError naming the split and batch. `labels` are
    split_batch's keywords (class_names, num_classes, notes).
    """
    seen = read = 0
    batches = loader_batches(loader, split)
    while limit is None or seen < limit:  # checked before the next batch is pulled from the loader
        got = next(batches, None)
        if got is None:
            break
        index, batch = got
        x, y = split_batch(batch, split, index, **labels)
        if limit is not None and seen + len(x) > limit:
            x, y = x[: limit - seen], y[: limit - seen]
        seen += len(x)
        if index % world == rank:
            yield x, y
        read += 1
    if read == 0:
        raise UserError(f"the {split} loader is empty; check the data factory")


def loader_batches(loader: Iterable, split: str) -> Iterator[tuple[int, object]]:
    """(index, batch) from a loader; one that raises mid-way is a UserError naming the split and batch."""
    it, index = iter(loader), 0
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"the {split} loader raised at batch {index}: {type(e).__name__}: {e}") from e
        yield index, batch
        index += 1


def loader_length(loader: Iterable, limit: int | None) -> int | None:
    """Number of batches if knowable (for progress bars)."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    bs = getattr(loader, "batch_size", None)
    if limit is not None and bs:
        n = min(n, -(-limit // bs))
    return n
