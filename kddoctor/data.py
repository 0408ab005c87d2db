"""FACTORY parsing, batch adapters and ImageFolder trees with the student's timm transforms."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

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


def load_factory(ref: str, data_args: dict | None = None) -> DataBundle:
    """Call a FACTORY (file.py:FUNC or module:FUNC) with the --data-arg keywords."""
    fn = resolve_callable(ref, "data FACTORY")
    data_args = data_args or {}
    try:
        inspect.signature(fn).bind(**data_args)
    except TypeError as e:
        raise UserError(f"data FACTORY {ref!r} does not take these --data-arg values: {e}") from e
    except ValueError:
        pass
    try:
        obj = fn(**data_args)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"data FACTORY {ref!r} raised {type(e).__name__}: {e}") from e
    return from_mapping(obj, repr(ref))


def image_folder(
    root: str | Path, student: torch.nn.Module, *, batch_size: int, workers: int = 2, pin_memory: bool = False
) -> DataBundle:
    """DIR/train/<class>/... and DIR/val/<class>/..., both under the student's eval transforms."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(
                f"--data-dir {root}: no {split}/ folder; expected {root}/train/<class>/... "
                f"and {root}/val/<class>/..."
            )
    cfg = resolve_data_config({}, model=student)
    tf = create_transform(**cfg, is_training=False)
    try:
        train = ImageFolder(str(root / "train"), transform=tf)
        val = ImageFolder(str(root / "val"), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"--data-dir {root}: {e}") from e
    if train.classes != val.classes:
        raise UserError(f"--data-dir {root}: train/ and val/ have different class folders")
    mk = lambda ds: torch.utils.data.DataLoader(  # noqa: E731
        ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory
    )
    return DataBundle(
        {"train": mk(train), "val": mk(val)}, num_classes=len(train.classes), class_names=list(train.classes)
    )


def split_batch(batch: object, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from a tuple/list batch or a mapping batch."""
    if isinstance(batch, Mapping):
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
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.ndim == 2 and y.shape[0] == x.shape[0] and y.is_floating_point():
        y = y.argmax(1)  # one-hot or soft labels: the class with the most mass
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise UserError(
            f"{split} batch {index}: targets of shape {list(y.shape)} do not match "
            f"{x.shape[0]} inputs; use class indices of shape [B]"
        )
    if y.is_floating_point():
        y = y.long()
    return x, y


def iter_batches(
    loader: Iterable, split: str, limit: int | None = None, rank: int = 0, world: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Adapted batches of one split, trimmed to `limit` samples; rank r of `world` takes batches i%world==r.

    A loader that raises mid-way becomes a UserError naming the split and batch.
    """
    seen = 0
    it = iter(loader)
    index = 0
    while limit is None or seen < limit:
        try:
            batch = next(it)
        except StopIteration:
            break
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"the {split} loader raised at batch {index}: {type(e).__name__}: {e}") from e
        x, y = split_batch(batch, split, index)
        if limit is not None and seen + len(x) > limit:
            x, y = x[: limit - seen], y[: limit - seen]
        seen += len(x)
        if index % world == rank:
            yield x, y
        index += 1
    if index == 0:
        raise UserError(f"the {split} loader is empty; check the data factory")


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
