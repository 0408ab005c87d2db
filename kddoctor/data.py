"""FACTORY parsing and batch adapters (ImageFolder trees: image_folder.py)."""

from __future__ import annotations

import ast
import inspect
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
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
    # role -> {"mean": [...], "std": [...]} when kddoctor, not the loader, normalizes (--data-dir)
    normalization: dict[str, dict] | None = None
    notes: list[str] = field(default_factory=list)  # what kddoctor decided about the data, in sentences
    tokenizer: object = None  # causal LMs: the tokenizer that made the batches (a factory's 'tokenizer')


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
    return DataBundle(
        splits,
        num_classes=nc,
        class_names=[str(n) for n in names] if names else None,
        tokenizer=obj.get("tokenizer"),
    )


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
