"""Teacher-output cache: a second diagnosis against the same teacher and data skips the teacher pass.

Keyed by the teacher's identity (a hash of its weights, SPEC and code) and the split; every batch is
checked against a fingerprint of its inputs (after preprocessing), so changed data or transforms
never reuse stale logits. Files are written to a temporary name and renamed: safe when several
runs share the cache directory.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._io import atomic_write


def cache_dir() -> Path:
    """kddoctor's cache root: $KDDOCTOR_CACHE, default ~/.cache/kddoctor (teacher outputs, demo models)."""
    return Path(os.environ.get("KDDOCTOR_CACHE", Path.home() / ".cache" / "kddoctor"))


CACHE_VERSION = 3  # 2: the key covers the model's code; 3: logits only (features are recomputed)


def model_fingerprint(model: nn.Module, spec: str) -> str:
    """sha256 over the SPEC, the model's code and every parameter and buffer (name, shape, dtype, bytes)."""
    h = hashlib.sha256(f"kddoctor-teacher-v{CACHE_VERSION}|{spec}".encode())
    h.update(code_fingerprint(model, spec))
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def code_fingerprint(model: nn.Module, spec: str) -> bytes:
    """The code behind a model: every distinct module class, and the file of a `path.py:FUNC` SPEC."""
    h = hashlib.sha256()
    classes = {f"{c.__module__}.{c.__qualname__}": c for c in map(type, model.modules())}
    for name in sorted(classes):
        h.update(name.encode() + b"\0" + _class_code(classes[name]))
    for m in model.modules():  # TorchScript: one Python class for all, the code lives in the module
        if isinstance(m, torch.jit.ScriptModule):
            h.update(str(getattr(m, "code", "")).encode())
    where = spec.rpartition(":")[0]
    if where.endswith(".py") and Path(where).is_file():
        h.update(Path(where).read_bytes())
    return h.digest()


def _class_code(cls: type) -> bytes:
    """A class's source; without one (exec, REPL), the bytecode of the functions it defines."""
    try:
        return inspect.getsource(cls).encode()
    except (OSError, TypeError):
        funcs = (getattr(v, "__func__", v) for v in vars(cls).values())
        return b"".join(_code_bytes(f.__code__) for f in funcs if hasattr(f, "__code__"))


def _code_bytes(code) -> bytes:
    consts = (_code_bytes(c) if inspect.iscode(c) else repr(c).encode() for c in code.co_consts)
    return b"|".join([code.co_code, repr(code.co_names).encode(), *consts])


def batch_fingerprint(x: torch.Tensor) -> str:
    """Cheap fingerprint of a CPU input batch: shape, dtype, full float64 sum, and a strided sample."""
    flat = x.detach().reshape(-1)
    h = hashlib.blake2b(
        f"{tuple(x.shape)}|{x.dtype}|{float(flat.sum(dtype=torch.float64))!r}".encode(), digest_size=16
    )
    h.update(flat[::61].contiguous().numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """Teacher logits (and the first feature rows) of one split, read and written as one .npz."""

    def __init__(
        self, root: Path, teacher_id: str, split: str, limit: int | None, rank: int = 0, world: int = 1
    ) -> None:
        self.path = Path(root) / f"{teacher_id}-{split}-limit{limit}-r{rank}of{world}.npz"
        self.old: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    self.old = {k: z[k] for k in z.files}
            except (OSError, ValueError, KeyError):
                self.old = {}  # unreadable cache: recompute and overwrite
        self.digests: list[str] = []
        self.chunks: list[torch.Tensor] = []
        self.hits = 0
        self.misses = 0

    def lookup(self, index: int, digest: str) -> torch.Tensor | None:
        """Cached teacher logits of batch `index` if its inputs are unchanged."""
        old = self.old
        if not old or index >= len(old["digests"]) or str(old["digests"][index]) != digest:
            return None
        start, stop = old["offsets"][index], old["offsets"][index + 1]
        return torch.from_numpy(old["logits"][start:stop])

    def record(self, digest: str, logits: torch.Tensor, hit: bool) -> None:
        self.digests.append(digest)
        self.chunks.append(logits)
        self.hits += hit
        self.misses += not hit

    def save(self) -> None:
        """Write the split's logits atomically (skipped when every batch was a hit)."""
        if self.misses == 0 and self.old:
            return
        logits = (
            torch.cat([c.float().cpu() for c in self.chunks]).numpy() if self.chunks else np.zeros((0, 0))
        )
        offsets = np.cumsum([0] + [len(c) for c in self.chunks])
        arrays = {"digests": np.array(self.digests), "offsets": offsets, "logits": logits.astype(np.float32)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path.parent, {self.path.name: lambda fh: np.savez(fh, **arrays)})
        except OSError:
            pass  # a cache that cannot be written is not an error
