"""What the image pass taps besides the logits: the classifier's input features, and per-channel input
statistics (fixed size, on the device)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .models import CLASSIFIER_HINTS


def classifier_of(model: nn.Module) -> nn.Module | None:
    """The classifier: timm's get_classifier(), a Linear named like a head (`fc`, `score`), else the last."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            head = get()
        except Exception:
            head = None
        if isinstance(head, nn.Linear):
            return head
        if isinstance(head, nn.Module):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if linears:
                return linears[-1]
    named = (getattr(model, hint, None) for hint in CLASSIFIER_HINTS)  # e.g. Hugging Face's `score`
    head = next((m for m in named if isinstance(m, nn.Linear)), None)
    if head is not None:
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


class FeatureTap:
    """Captures the classifier's input (penultimate features) of the batch being evaluated."""

    def __init__(self, model: nn.Module) -> None:
        self.chunks: list[torch.Tensor] = []
        self.head = classifier_of(model)
        self._handle = self.head.register_forward_pre_hook(self._hook) if self.head is not None else None

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if args:
            self.chunks.append(args[0].detach().flatten(1).float())

    def take(self) -> torch.Tensor | None:
        """Features of the last batch (micro-batches joined), or None when the head did not run."""
        chunks, self.chunks = self.chunks, []
        return torch.cat(chunks) if chunks else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()


class InputStats:
    """Per-channel count/sum/sum²/min/max of the inputs, fixed size, on the device."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.shapes: set[tuple[int, ...]] = set()
        self.dtypes: set[str] = set()

    def update(self, x: torch.Tensor) -> None:
        self.shapes.add(tuple(x.shape[1:]))
        self.dtypes.add(str(x.dtype).replace("torch.", ""))
        xf = x.double()
        flat = xf.transpose(0, 1).reshape(x.shape[1], -1) if x.ndim >= 3 else xf.reshape(1, -1)
        finite = torch.isfinite(flat)
        clean = torch.where(finite, flat, torch.zeros_like(flat))
        big = torch.finfo(torch.float64).max
        upd = {
            "count": finite.sum(1).double(),
            "sum": clean.sum(1),
            "sumsq": (clean * clean).sum(1),
            "min": torch.where(finite, flat, torch.full_like(flat, big)).amin(1),
            "max": torch.where(finite, flat, torch.full_like(flat, -big)).amax(1),
            "nonfinite": (~finite).sum(1).double(),
        }
        if self.state is None or self.state["sum"].shape != upd["sum"].shape:
            if self.state is not None:
                return  # channel count changed mid-stream: recorded in shapes, stats keep the first
            self.state = upd
            return
        for k in ("count", "sum", "sumsq", "nonfinite"):
            self.state[k] += upd[k]
        self.state["min"] = torch.minimum(self.state["min"], upd["min"])
        self.state["max"] = torch.maximum(self.state["max"], upd["max"])

    def all_reduce(self) -> None:
        """Combine every rank's input statistics (sums add, extremes take min/max)."""
        import torch.distributed as dist

        for k, op in (
            ("count", "SUM"),
            ("sum", "SUM"),
            ("sumsq", "SUM"),
            ("nonfinite", "SUM"),
            ("min", "MIN"),
            ("max", "MAX"),
        ):
            dist.all_reduce(self.state[k], op=getattr(dist.ReduceOp, op))

    def compute(self) -> dict:
        if self.state is None:
            return {}
        s = {k: v.cpu().numpy() for k, v in self.state.items()}
        n = np.maximum(s["count"], 1)
        mean = s["sum"] / n
        std = np.sqrt(np.maximum(s["sumsq"] / n - mean**2, 0.0))
        return {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "min": s["min"].tolist(),
            "max": s["max"].tolist(),
            "nonfinite": int(s["nonfinite"].sum()),
            "shapes": sorted(list(sh) for sh in self.shapes),
            "dtypes": sorted(self.dtypes),
        }
