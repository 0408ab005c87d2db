"""How large a train sample must be: sampling error of the train-side metrics against sample size.

The demo's trained digits teacher and student, on a large train split made of the 1,797 real digits
with pixel noise (so every sample differs): one full pass records each sample's teacher and student
correctness and their agreement; then, for each sample size, seeded class-stratified samples drawn
exactly as `--train-samples` draws them (kddoctor._sampling.stratified_indices) give the error
against the full-split value. The error falls as 1/sqrt(n); the default sample is where the widest
95 % interval of any train-side rate is under half the smallest train-side gap a cause is scored on
(1 point, the lower end of every train-side ramp in causes.toml).

    python bench/convergence.py                      # 262,144 samples, 20 draws per size
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from sklearn.datasets import load_digits

from kddoctor._sampling import stratified_indices
from kddoctor.metrics.functional import wilson_interval
from kddoctor.zoo import demo
from kddoctor.zoo.digits import DIGITS_MEAN, DIGITS_STD

SIZES = (1_000, 5_000, 10_000, 20_000, 50_000, 100_000)


def noisy_digits(n: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    idx = np.arange(n) % len(d.images)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy((d.images[idx] / 16.0).astype(np.float32))[:, None]
    x = x + noise * torch.randn(x.shape, generator=gen)
    return (x - DIGITS_MEAN) / DIGITS_STD, torch.from_numpy(d.target[idx].astype(np.int64))


@torch.no_grad()
def per_sample(n: int, noise: float) -> dict[str, np.ndarray]:
    t_path, s_path = demo.build_demo_pair()
    teacher, student = demo.teacher_cnn().eval(), demo.student_cnn().eval()
    teacher.load_state_dict(torch.load(t_path, weights_only=True)["state_dict"])
    student.load_state_dict(torch.load(s_path, weights_only=True)["model"])
    x, y = noisy_digits(n, noise)
    cols: dict[str, list] = {"t": [], "s": []}
    for i in range(0, n, 4096):
        cols["t"].append(teacher(x[i : i + 4096]).argmax(1))
        cols["s"].append(student(x[i : i + 4096]).argmax(1))
    t, s = torch.cat(cols["t"]).numpy(), torch.cat(cols["s"]).numpy()
    y = y.numpy()
    return {"y": y, "teacher_acc": t == y, "student_acc": s == y, "agreement": t == s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=262_144)
    ap.add_argument("--noise", type=float, default=0.25, help="pixel noise (of the [0, 1] range)")
    ap.add_argument("--draws", type=int, default=20)
    args = ap.parse_args()
    cols = per_sample(args.n, args.noise)
    full = {k: float(v.mean()) for k, v in cols.items() if k != "y"}
    print(
        f"train split {args.n:,} noisy digits; full-split rates: "
        + ", ".join(f"{k} {v:.2%}" for k, v in full.items())
    )
    print("sample n | metric | mean |error| | 95th pct |error| | Wilson 95% half-width | worst case (p=0.5)")
    for k in SIZES:
        if k >= args.n:
            continue
        for metric, values in full.items():
            errs = [
                abs(cols[metric][stratified_indices(args.n, k, seed, cols["y"])].mean() - values)
                for seed in range(args.draws)
            ]
            lo, hi = wilson_interval(values * k, k)
            print(
                f"{k:8,d} | {metric:11s} | {np.mean(errs):13.3%} | {np.percentile(errs, 95):15.3%} | "
                f"{(hi - lo) / 2:21.3%} | {1.96 * math.sqrt(0.25 / k):.3%}"
            )


if __name__ == "__main__":
    main()
