"""The single evaluation pass: teacher and student on the same batch, state kept on the device.

On CUDA: bf16 autocast, non_blocking copies, inference_mode, and no per-batch `.item()`/`.cpu()`
(everything is accumulated on the device and read back once per split).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ._cache import TeacherCache, batch_fingerprint
from ._dist import gather_columns, merge_reservoirs
from ._sampling import ContentKeys, Reservoir, changed_fraction, expected_samples, limit_loader
from .data import iter_batches, split_batch
from .errors import UserError
from .metrics import PairMetrics, SampleColumns
from .taps import FeatureTap, InputStats, classifier_of  # noqa: F401  (classifier_of: public here)


def pick_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; validates explicit choices."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: only cpu and cuda are supported")
    return dev


def as_logits(out: object, num_classes: int | None = None) -> torch.Tensor:
    """Model output -> logits tensor (plain tensors, `.logits` objects, tuples, dicts)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    if isinstance(out, list | tuple) and out and isinstance(out[0], torch.Tensor):
        return _logits_in_sequence(out, num_classes)
    raise UserError(f"model returned {type(out).__name__}; return logits (a [B, classes] tensor)")


def _logits_in_sequence(out: list | tuple, num_classes: int | None) -> torch.Tensor:
    """The [B, C] tensor of e.g. (features, logits): C == num_classes when known, else the only 2-D shape."""
    flat = [t for t in out if isinstance(t, torch.Tensor) and t.ndim == 2]
    match = [t for t in flat if num_classes is not None and t.shape[1] == num_classes]
    if match:
        return match[0]
    if len({tuple(t.shape) for t in flat}) > 1:
        shapes = ", ".join(str(list(t.shape)) for t in flat)
        raise UserError(
            f"model returned a {type(out).__name__} of tensors {shapes} and kddoctor cannot tell which "
            "holds the logits; return the logits alone or an object with a .logits attribute"
        )
    return flat[0] if flat else out[0]


@dataclass
class SplitResult:
    """Everything one split's pass leaves behind: fixed-size state plus a few floats per sample.

    The probe subsets (`cache_x`, `features`, `logits_subset`) are bottom-k samples by content key:
    a seeded uniform random sample that is the same whatever order the loader yields the data in.
    """

    name: str
    metrics: dict
    stats: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    inputs: dict
    features: dict[str, np.ndarray | None] = field(default_factory=dict)
    logits_subset: dict[str, np.ndarray] = field(default_factory=dict)  # teacher, student, target
    cache_x: torch.Tensor | None = None
    cache_y: torch.Tensor | None = None
    proj: np.ndarray | None = None  # per-sample content projection (float64), for augmentation checks
    all_logits: dict[str, np.ndarray] | None = None
    seconds: float = 0.0
    local_rows: int = 0  # samples this rank evaluated (all of them in a single process)
    micro_batch_splits: int = 0  # how often a CUDA OOM made the engine halve its batch
    teacher_cache: dict | None = None  # hits / misses when the teacher cache was used
    sampled: str | None = None  # how the split was subsampled (--limit / --train-samples), if it was
    augmented: float | None = None  # share of inputs that differ on a second pass (augmentation)
    label_notes: list[str] = field(default_factory=list)  # how labels that were not indices were read

    @property
    def n(self) -> int:
        return int(self.stats["n"])


class _MicroBatcher:
    """Runs a model on a batch; on CUDA out-of-memory, splits it into micro-batches and goes on."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.micro: int | None = None  # largest size known to fit, once an OOM has happened
        self.splits = 0
        self.num_classes = num_classes

    def __call__(self, model: nn.Module, x: torch.Tensor, autocast: bool) -> torch.Tensor:
        size = self.micro or len(x)
        while True:
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    outs = [
                        as_logits(model(x[i : i + size]), self.num_classes).float()
                        for i in range(0, len(x), size)
                    ]
                return outs[0] if len(outs) == 1 else torch.cat(outs)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                if x.is_cuda:
                    torch.cuda.empty_cache()
                size = max(1, size // 2)
                self.micro = size
                self.splits += 1


class _Retained:
    """What the pass keeps besides the streaming state: two bottom-k reservoirs keyed by content (inputs
    for the fine-tuning probes; features and logits for the linear probes and calibration), and every
    logit on request."""

    def __init__(self, cache_rows: int, feature_rows: int, save_logits: bool, cuda: bool) -> None:
        self.inputs = Reservoir(cache_rows)
        self.outputs = Reservoir(feature_rows)
        self.save_logits, self.cuda = save_logits, cuda
        self.full: dict[str, list[torch.Tensor]] = {"teacher": [], "student": [], "targets": []}
        self.feat_width: dict[str, int] = {}

    def add(self, key, x, y, t, s, feats: dict[str, torch.Tensor | None], y_cpu) -> None:
        """Offer one batch's rows (key +inf for rows excluded from every metric)."""
        self.inputs.offer(key, x=x, y=y)
        cols = {"teacher": t, "student": s, "target": y}
        for role, f in feats.items():
            width = self.feat_width.get(role, 0)
            if f is None:  # a cached teacher batch none of whose rows can enter the subset
                f = torch.full((len(t), width), float("nan"), device=t.device)
            elif width == 0 and f.shape[1] and f"feat_{role}" in self.outputs.cols:
                # the first batches were cache hits: widen their placeholder rows to the real width
                old = self.outputs.cols[f"feat_{role}"]
                self.outputs.cols[f"feat_{role}"] = torch.full(
                    (len(old), f.shape[1]), float("nan"), device=old.device
                )
            self.feat_width[role] = f.shape[1]
            cols[f"feat_{role}"] = f
        self.outputs.offer(key, **cols)
        if self.save_logits:
            self.full["teacher"].append(t.to("cpu", non_blocking=self.cuda))
            self.full["student"].append(s.to("cpu", non_blocking=self.cuda))
            self.full["targets"].append(y_cpu)

    def fill(self, result: SplitResult) -> None:
        _, ins = self.inputs.result()
        result.cache_x = ins["x"].cpu() if ins else None
        result.cache_y = ins["y"].cpu() if ins else None
        _, outs = self.outputs.result()
        result.logits_subset = {
            k: outs[k].cpu().numpy() for k in ("teacher", "student", "target") if k in outs
        }
        feats = {
            r: (outs[f"feat_{r}"].cpu().numpy() if f"feat_{r}" in outs else None)
            for r in ("teacher", "student")
        }
        result.features = {r: (None if f is None or f.shape[1] == 0 else f) for r, f in feats.items()}
        if self.save_logits:
            result.all_logits = {k: torch.cat(v).numpy() for k, v in self.full.items()}


def evaluate_split(
    teacher: nn.Module,
    student: nn.Module,
    loader: Iterable,
    *,
    name: str,
    num_classes: int | None,
    device: torch.device,
    limit: int | None = None,
    explicit_limit: bool = True,
    feature_rows: int = 0,
    cache_rows: int = 0,
    save_logits: bool = False,
    channels_last: bool = False,
    bar=None,
    rank: int = 0,
    world: int = 1,
    teacher_cache: TeacherCache | None = None,
    seed: int = 0,
    probe_augmentation: bool = False,
    class_names: list[str] | None = None,
) -> SplitResult:
    """Run both models over one split in a single streaming pass (the teacher's logits may come from
    the teacher cache; rank r of `world` takes every world-th batch and the state is all-reduced).

    `limit` keeps a seeded, loader-order-independent subset of that many samples (see
    _sampling.limit_loader; `explicit_limit`: the user asked for that number)."""
    start = time.perf_counter()
    label_notes: set[str] = set()
    labels = {"class_names": class_names, "num_classes": num_classes, "notes": label_notes}
    split = functools.partial(split_batch, **labels)
    loader, sampled = limit_loader(loader, limit, seed, split, explicit=explicit_limit)
    kept = _Retained(cache_rows, feature_rows, save_logits, device.type == "cuda")
    p = _Pass(teacher, student, device, num_classes, seed, kept, channels_last, teacher_cache)
    task = bar.add_task(f"{name}: teacher + student", total=expected_samples(loader)) if bar else None
    try:
        with torch.inference_mode():
            for index, (x_cpu, y_cpu) in enumerate(iter_batches(loader, name, None, rank, world, **labels)):
                p.step(index, x_cpu, y_cpu)
                if bar is not None:
                    bar.advance(task, len(x_cpu))
    finally:
        p.close()
        if bar is not None:
            bar.remove_task(task)
    if getattr(loader, "took_all", False):
        sampled = None  # the split held fewer samples than the limit
    result = p.result(name, world, sampled, sorted(label_notes))
    result.seconds = time.perf_counter() - start
    if probe_augmentation:
        changed = changed_fraction(loader, result.proj, seed, device, split)
        result.augmented = None if changed is None else changed[0]
    return result


class _Pass:
    """The state of one split's pass: metrics, per-sample columns, input statistics, reservoirs."""

    def __init__(self, teacher, student, device, num_classes, seed, kept, channels_last, cache) -> None:
        self.teacher, self.student, self.device, self.num_classes = teacher, student, device, num_classes
        self.cuda, self.channels_last, self.cache, self.kept = (
            device.type == "cuda",
            channels_last,
            cache,
            kept,
        )
        self.run = _MicroBatcher(num_classes)
        self.taps = {"teacher": FeatureTap(teacher), "student": FeatureTap(student)}
        self.metrics: PairMetrics | None = None
        self.columns, self.inputs, self.keys = SampleColumns(), InputStats(), ContentKeys(seed)
        self.projections: list[torch.Tensor] = []

    def step(self, index: int, x_cpu: torch.Tensor, y_cpu: torch.Tensor) -> None:
        """One batch through both models, into every accumulator (no host sync on CUDA)."""
        x = x_cpu.to(self.device, non_blocking=self.cuda)
        y = y_cpu.to(self.device, non_blocking=self.cuda)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.inputs.update(x)
        proj = self.keys.project(x)
        taps = self.taps
        taps["student"].take()  # one module as both teacher and student fires both hooks
        t, from_cache = _teacher_logits(self.teacher, x, x_cpu, index, self.run, self.cache)
        feats = {"teacher": taps["teacher"].take()}
        if from_cache:  # the teacher did not run: its features only for rows that may be kept
            feats["teacher"] = _entering_features(
                self.teacher, x, proj, self.kept.outputs, self.run, taps["teacher"]
            )
        taps["student"].take()
        s = self.run(self.student, x, self.cuda)
        feats["student"] = taps["student"].take()
        taps["teacher"].take()
        if self.metrics is None:
            _check_shapes(t, s, x, self.num_classes)
            self.num_classes = t.shape[1]
            self.metrics = PairMetrics(self.num_classes, self.device)
        cols = self.metrics.update(t, s, y)
        self.columns.append(cols)
        self.projections.append(proj)
        key = torch.where(cols[:, -1] > 0, ContentKeys.key(proj), torch.full_like(proj, math.inf))
        self.kept.add(key, x, y, t, s, feats, y_cpu)

    def close(self) -> None:
        for tap in self.taps.values():
            tap.close()

    def result(self, name: str, world: int, sampled: str | None, label_notes: list[str]) -> SplitResult:
        """The split's result, read back once (all-reduced across ranks under torchrun)."""
        metrics = self.metrics
        if metrics is None:  # this rank received no batch
            raise UserError(f"the {name} split has fewer batches than there are ranks ({world})")
        if self.cuda:
            torch.cuda.synchronize(self.device)  # the non_blocking copies are complete from here on
        local_rows = int(metrics.stats["n"])
        if world > 1:
            metrics.all_reduce()
            self.inputs.all_reduce()
        stats = metrics.state()
        if stats["bad_target"] > 0:
            raise UserError(
                f"{int(stats['bad_target'])} {name} labels lie outside [0, {self.num_classes}); "
                "check --num-classes and the label encoding"
            )
        samples = self.columns.finish()
        proj_all = torch.cat(self.projections).cpu().numpy()
        cache = self.cache
        result = SplitResult(
            name=name,
            metrics={
                **metrics.compute(),
                "n": int(stats["n"]),
                "excluded_nonfinite": int(stats["nonfinite"]),
            },
            stats=stats,
            samples=gather_columns(samples) if world > 1 else samples,
            inputs=self.inputs.compute(),
            proj=gather_columns({"p": proj_all})["p"] if world > 1 else proj_all,
            local_rows=local_rows,
            micro_batch_splits=self.run.splits,
            teacher_cache=None if cache is None else {"hits": cache.hits, "misses": cache.misses},
            sampled=sampled,
            label_notes=label_notes,
        )
        (merge_reservoirs(self.kept) if world > 1 else self.kept).fill(result)
        if cache is not None:
            cache.save()
        return result


def _teacher_logits(teacher, x, x_cpu, index, run, cache) -> tuple[torch.Tensor, bool]:
    """The teacher's logits for one batch (and whether they came from the cache, where its inputs are
    unchanged) else computed."""
    cuda = x.device.type == "cuda"
    if cache is None:
        return run(teacher, x, cuda), False
    digest = batch_fingerprint(x_cpu)
    hit = cache.lookup(index, digest)
    if hit is not None:
        cache.record(digest, hit, True)
        return hit.to(x.device, non_blocking=cuda), True
    t = run(teacher, x, cuda)
    cache.record(digest, t.to("cpu", non_blocking=cuda), False)
    return t, False


def _entering_features(teacher, x, proj, reservoir: Reservoir, run, tap: FeatureTap) -> torch.Tensor | None:
    """Teacher features of the rows of a cached batch that can enter the feature subset (few, once it is
    full): the subset is then the same whether or not the teacher's logits came from the cache."""
    if tap.head is None or reservoir.k <= 0:
        return None
    key = ContentKeys.key(proj)
    full = reservoir.keys is not None and len(reservoir.keys) >= reservoir.k
    rows = torch.nonzero(key < reservoir.keys.max() if full else torch.isfinite(key)).flatten()
    if len(rows) == 0:
        return None
    run(teacher, x[rows], x.device.type == "cuda")
    part = tap.take()
    out = torch.full((len(x), part.shape[1]), float("nan"), device=part.device)
    out[rows] = part
    return out


def _check_shapes(t: torch.Tensor, s: torch.Tensor, x: torch.Tensor, num_classes: int | None) -> None:
    if t.ndim == 3 and s.ndim == 3:
        raise UserError(
            f"the models return [batch, tokens, vocab] logits ({list(t.shape)}): causal LMs; "
            "pass --task causal-lm"
        )
    if t.ndim != 2 or s.ndim != 2:
        raise UserError(
            f"models must return [B, classes] logits; teacher gave {list(t.shape)}, "
            f"student {list(s.shape)} for inputs {list(x.shape)}"
        )
    if t.shape[1] != s.shape[1]:
        raise UserError(
            f"teacher predicts {t.shape[1]} classes but student {s.shape[1]}; "
            "they must share one label space (check --num-classes and the checkpoints)"
        )
    if num_classes is not None and t.shape[1] != num_classes:
        raise UserError(
            f"models predict {t.shape[1]} classes but the data has {num_classes}; check --num-classes"
        )
