"""Shared bench setup: real digits upsampled to 32x32 RGB and repeated, timm CNNs (random weights)."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TEACHER, STUDENT = "resnet18", "resnet10t"


def digits_32px(n: int, seed: int = 0) -> torch.utils.data.TensorDataset:
    """n samples: the 1,797 digits upsampled to 3x32x32, normalized, repeated with small pixel noise."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32))[:, None]
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.3) / 0.38
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = torch.arange(n) % len(x)
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(x[idx] + 0.05 * torch.randn(n, 3, 32, 32, generator=gen), y[idx])


class LazyDigits(torch.utils.data.Dataset):
    """Like digits_32px, but each sample is made on access: the data set itself takes no memory."""

    def __init__(self, n: int, seed: int = 0) -> None:
        base = digits_32px(1797, seed)
        self.x, self.y, self.n, self.seed = base.tensors[0], base.tensors[1], n, seed
        self.targets = self.y.numpy()[np.arange(n) % len(self.y)]  # labels without making a sample

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        j = i % len(self.x)
        return self.x[j] + 0.05 * torch.randn(3, 32, 32, generator=gen), self.y[j]


def loaders(n_train: int, n_val: int, batch_size: int = 256) -> tuple:
    mk = lambda ds: torch.utils.data.DataLoader(ds, batch_size=batch_size)  # noqa: E731
    return mk(digits_32px(n_train, 0)), mk(digits_32px(n_val, 1))


def models(device: str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module]:
    import timm

    torch.manual_seed(0)
    t = timm.create_model(TEACHER, pretrained=False, num_classes=10).eval().to(device)
    s = timm.create_model(STUDENT, pretrained=False, num_classes=10).eval().to(device)
    return t, s


def raw_pass(teacher, student, loader_list, device: str) -> None:
    """The baseline: both models under inference_mode (autocast on CUDA) and nothing else."""
    cuda = device.startswith("cuda")
    with torch.inference_mode():
        for loader in loader_list:
            for x, _ in loader:
                x = x.to(device, non_blocking=cuda)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    teacher(x)
                    student(x)
    if cuda:
        torch.cuda.synchronize()


class PeakRSS:
    """Samples this process's resident set size every 5 ms; `.peak` in MiB over the with-block."""

    def __enter__(self):
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        status = Path("/proc/self/status")
        while not self._stop.is_set():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 1024)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    """(wall seconds, CPU seconds of this process, peak RSS MiB, result)."""
    start, cpu = time.perf_counter(), time.process_time()
    with PeakRSS() as mem:
        out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, mem.peak, out
