"""Seeded subsets that do not depend on loader order.

Every sample gets a key computed from its *content* (a fixed random projection of its input), so the
same data in any order yields the same keys. The probes keep the rows with the smallest keys (a
bottom-k reservoir: a uniform random sample, and the same sample whatever the loader order), and
`--limit` / `--train-samples` pick a seeded, class-stratified subset of the dataset's indices when the
loader exposes one, else the bottom-k rows by key over two passes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch

KEY_MIX = 12.9898  # spreads the projection over many unit intervals before taking the fraction


class ContentKeys:
    """proj(x) = <x, r> with a seeded Gaussian r per input size; key = frac(proj * KEY_MIX)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._r: dict[tuple[int, str], torch.Tensor] = {}

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 projection of each row; NaN for rows with a non-finite input."""
        flat = x.detach().reshape(len(x), -1)
        dim = flat.shape[1]
        r = self._r.get((dim, str(x.device)))
        if r is None:
            gen = torch.Generator().manual_seed(self.seed * 7919 + dim)
            r = torch.randn(dim, generator=gen, dtype=torch.float64).to(x.device)
            self._r[(dim, str(x.device))] = r
        return (flat.double() * r).sum(1)

    @staticmethod
    def key(proj: torch.Tensor) -> torch.Tensor:
        """Uniform-looking keys in [0, 1); +inf for non-finite rows so they are never selected."""
        k = torch.frac(torch.abs(proj) * KEY_MIX + 0.5 * torch.sign(proj))
        k = torch.where(k < 0, k + 1, k)
        return torch.where(torch.isfinite(proj), k, torch.full_like(k, math.inf))


class Reservoir:
    """The k rows with the smallest keys seen so far, with aligned payload columns.

    On CUDA the update is a concatenation + topk on the device (no host sync); on CPU rows above the
    current threshold are dropped first, so a full reservoir costs almost nothing per batch.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.keys: torch.Tensor | None = None
        self.cols: dict[str, torch.Tensor] = {}

    def offer(self, keys: torch.Tensor, **cols: torch.Tensor) -> None:
        if self.k <= 0:
            return
        if not keys.is_cuda:
            if self.keys is not None and len(self.keys) >= self.k:
                enter = keys < self.keys.max()
                if not bool(enter.any()):
                    return
                keys, cols = keys[enter], {n: v[enter] for n, v in cols.items()}
        if self.keys is None:
            all_keys, all_cols = keys, cols
        else:
            all_keys = torch.cat([self.keys, keys])
            all_cols = {n: torch.cat([self.cols[n], v.to(self.cols[n].device)]) for n, v in cols.items()}
        if len(all_keys) > self.k:
            idx = torch.topk(all_keys, self.k, largest=False, sorted=False).indices
            all_keys = all_keys[idx]
            all_cols = {n: v[idx.to(v.device)] for n, v in all_cols.items()}
        self.keys, self.cols = all_keys, all_cols

    def result(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rows sorted by key (a canonical order), non-finite keys dropped."""
        if self.keys is None:
            return torch.zeros(0, dtype=torch.float64), {}
        order = torch.argsort(self.keys)
        order = order[torch.isfinite(self.keys[order])]
        return self.keys[order], {n: v[order.to(v.device)] for n, v in self.cols.items()}


def merge_results(parts: list[tuple[torch.Tensor, dict[str, torch.Tensor]]], k: int) -> tuple:
    """Bottom-k over several reservoirs' results (torchrun ranks)."""
    res = Reservoir(k)
    for keys, cols in parts:
        if len(keys):
            res.offer(keys.cpu(), **{n: v.cpu() for n, v in cols.items()})
    return res.result()


def dataset_targets(ds: object) -> np.ndarray | None:
    """Class labels of a map-style dataset without reading its samples, where it exposes them."""
    for attr in ("targets", "labels"):
        t = getattr(ds, attr, None)
        if t is not None:
            try:
                arr = np.asarray(t)
            except Exception:
                return None
            return arr if arr.ndim == 1 else None
    tensors = getattr(ds, "tensors", None)  # TensorDataset(x, y)
    if isinstance(tensors, tuple) and len(tensors) >= 2 and tensors[1].ndim == 1:
        return tensors[1].numpy()
    return None


def stratified_indices(n: int, k: int, seed: int, targets: np.ndarray | None) -> np.ndarray:
    """k of range(n), seeded; proportional to each class's share when the labels are known."""
    rng = np.random.default_rng(seed)
    if targets is None or len(targets) != n:
        return np.sort(rng.choice(n, k, replace=False))
    classes, inverse = np.unique(targets, return_inverse=True)
    counts = np.bincount(inverse)
    quota = np.floor(counts * k / n).astype(int)
    # distribute the remainder to the classes with the largest fractional parts (seeded tie-break)
    rest = k - quota.sum()
    frac = counts * k / n - quota + rng.random(len(classes)) * 1e-9
    quota[np.argsort(-frac)[:rest]] += 1
    picked = [rng.choice(np.flatnonzero(inverse == c), q, replace=False) for c, q in enumerate(quota) if q]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


def subset_loader(loader: Iterable, k: int, seed: int) -> tuple[Iterable, str] | None:
    """A DataLoader over a seeded stratified subset of k indices, when the loader is map-style."""
    from torch.utils.data import DataLoader, IterableDataset, Subset

    ds = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or ds is None or isinstance(ds, IterableDataset):
        return None
    try:
        n = len(ds)
    except TypeError:
        return None
    if n <= k:
        return loader, "all"
    if loader.batch_size is None:  # a custom batch_sampler: its batches cannot be re-cut
        return None
    targets = dataset_targets(ds)
    idx = stratified_indices(n, k, seed, targets)
    sub = DataLoader(
        Subset(ds, idx.tolist()),
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=False,
    )
    how = "class-stratified" if targets is not None else "uniform"
    return sub, f"a seeded {how} random subset of {k} of {n} samples (dataset indices)"


class KeyFiltered:
    """Loader wrapper: yields only rows whose content key is among the k smallest (one extra pass that
    reads the data, no model, finds the k-th smallest key), or below a given threshold (one pass)."""

    def __init__(
        self, loader: Iterable, k: int, seed: int, split_batch, threshold: float | None = None, project=None
    ) -> None:
        self.loader, self.k, self.split_batch = loader, k, split_batch
        self.project = project or ContentKeys(seed).project  # a task may key its rows its own way
        self.threshold = threshold  # given: keys are uniform on [0, 1), so a rate needs no first pass
        self.total = 0

    @property
    def expected(self) -> int | None:
        return self.k

    def _find_threshold(self) -> None:
        all_keys = []
        for i, batch in enumerate(self.loader):
            x, _ = self.split_batch(batch, "subset", i)
            all_keys.append(ContentKeys.key(self.project(x)).numpy())
        keys = np.concatenate(all_keys) if all_keys else np.zeros(0)
        self.total = len(keys)
        finite = np.sort(keys[np.isfinite(keys)])
        self.threshold = float(finite[self.k - 1]) if len(finite) >= self.k else math.inf

    @property
    def took_all(self) -> bool:
        """The split turned out no larger than k: every row was kept."""
        return self.threshold == math.inf

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.threshold is None:
            self._find_threshold()
        for i, batch in enumerate(self.loader):
            x, y = self.split_batch(batch, "subset", i)
            keep = ContentKeys.key(self.project(x)) <= self.threshold
            if bool(keep.any()):
                yield x[keep], y[keep]


def is_reiterable(loader: Iterable) -> bool:
    try:
        return iter(loader) is not loader
    except TypeError:
        return False


def changed_fraction(
    loader: Iterable, proj: np.ndarray, seed: int, device: torch.device, split_batch, batches: int = 2
) -> tuple[float, int] | None:
    """Share of rows in a second pass over the first `batches` batches whose content was not seen in the
    first pass: ~0 for a deterministic loader (shuffled or not), ~1 for an augmenting one."""
    if not is_reiterable(loader) or proj is None or not len(proj):
        return None
    ref = np.sort(proj[np.isfinite(proj)])
    keys = ContentKeys(seed)
    seen = changed = 0
    with torch.inference_mode():
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            x, _ = split_batch(batch, "train", i)
            p = keys.project(x.to(device)).cpu().numpy()
            p = p[np.isfinite(p)]
            pos = np.clip(np.searchsorted(ref, p), 1, max(len(ref) - 1, 1))
            near = np.minimum(np.abs(ref[pos - 1] - p), np.abs(ref[np.minimum(pos, len(ref) - 1)] - p))
            changed += int((near > 1e-7 * np.maximum(1.0, np.abs(p))).sum())
            seen += len(p)
    return (changed / seen, seen) if seen else None


def limit_loader(
    loader: Iterable, limit: int | None, seed: int, split_batch, explicit: bool = True, project=None
) -> tuple[Iterable, str | None]:
    """The loader itself, or one over a seeded sample of about `limit` samples, independent of loader
    order, and the sentence that says how it was drawn (None: the whole split).

    Map-style DataLoader: a class-stratified subset of the dataset's indices (nothing else is read).
    Otherwise, with a known size N: one pass keeping the rows whose content key is below limit/N (a
    Bernoulli sample; the data is read once, the models see only the kept rows). Of unknown size, when
    the user asked for that number (`explicit`): the `limit` smallest keys over two passes of a
    re-iterable loader, the first `limit` samples of a one-shot iterator (said so); a default sample
    of a split of unknown size is the whole split (never a biased or an extra-pass one)."""
    if limit is None:
        return loader, None
    sub = subset_loader(loader, limit, seed)
    if sub is not None:
        return sub[0], (None if sub[1] == "all" else sub[1])
    size = known_size(loader)
    if size is not None:
        if size <= limit:
            return loader, None
        rate = limit / size
        return KeyFiltered(loader, limit, seed, split_batch, threshold=rate, project=project), (
            f"a seeded Bernoulli sample at rate {rate:.3g} of {size} samples by content key "
            f"(about {limit}; one pass)"
        )
    if not explicit:  # a default sample of a split of unknown size: reading it all is the unbiased way
        return loader, None
    if is_reiterable(loader):
        return KeyFiltered(loader, limit, seed, split_batch, project=project), (
            f"the {limit} samples with the smallest seeded content keys (a uniform random subset; "
            "one extra pass reads the data)"
        )
    return _first(
        loader, limit, split_batch
    ), f"the first {limit} samples (the loader is a one-shot iterator)"


def _first(loader: Iterable, limit: int, split_batch) -> Iterator:
    seen = 0
    for i, batch in enumerate(loader):
        if seen >= limit:
            return
        x, y = split_batch(batch, "subset", i)
        yield x[: limit - seen], y[: limit - seen]
        seen += len(x)


def known_size(loader: Iterable) -> int | None:
    """The number of samples a loader yields, when its dataset says so without being read (a plain
    list of batches says only how many batches it holds: unknown)."""
    try:
        return len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


def expected_samples(loader: Iterable) -> int | None:
    """How many samples a (possibly sampled) loader will yield, for progress bars."""
    if isinstance(loader, KeyFiltered):
        return loader.expected
    return known_size(loader)
