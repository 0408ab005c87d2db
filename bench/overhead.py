"""Cost of a diagnosis relative to running the two models once.

(a) raw baseline: teacher + student forward over train and val, nothing else;
(b) kddoctor's main evaluation pass (all metrics, per-sample columns, input statistics, feature taps);
(c) the full default diagnose (every check, default probe budgets).
All three run in this one process on the same data, batch size and device; a and b alternate
`--repeats` times and the medians are compared, in wall time and in CPU time of this process
(on a shared 2-core machine single wall-clock runs of the same loop vary by 10-20 %; CPU time is
steadier).

    python bench/overhead.py                    # CPU, 20,480 samples
    python bench/overhead.py --device cuda --n-train 163840 --n-val 32768
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STUDENT, TEACHER, loaders, models, raw_pass, timed  # noqa: E402

from kddoctor import diagnose  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-train", type=int, default=16384)
    ap.add_argument("--n-val", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bookkeeping-only", action="store_true", help="only the noise-free estimate (d)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, val = loaders(args.n_train, args.n_val, args.batch_size)
    teacher, student = models(args.device)
    n = args.n_train + args.n_val
    raw_pass(teacher, student, [val], args.device)  # warm-up (allocator, kernels)
    if args.bookkeeping_only:
        bookkeeping(train, val, args, timed(lambda: raw_pass(teacher, student, [train, val], args.device))[0])
        return

    def main_pass():
        return diagnose(
            teacher,
            student,
            train,
            val,
            device=args.device,
            checks=[],
            channels_last=args.device.startswith("cuda"),
        )

    def full():
        return diagnose(
            teacher, student, train, val, device=args.device, channels_last=args.device.startswith("cuda")
        )

    a, b, cpu_a, cpu_b, mem_a, mem_b = [], [], [], [], [], []
    for _ in range(args.repeats):
        t, cpu, m, _ = timed(lambda: raw_pass(teacher, student, [train, val], args.device))
        a.append(t)
        cpu_a.append(cpu)
        mem_a.append(m)
        t, cpu, m, _ = timed(main_pass)
        b.append(t)
        cpu_b.append(cpu)
        mem_b.append(m)
    c, cpu_c, mem_c, diag = timed(full)
    ta, tb = statistics.median(a), statistics.median(b)
    ca, cb = statistics.median(cpu_a), statistics.median(cpu_b)
    print(
        f"device={args.device} teacher={TEACHER} student={STUDENT} samples={n} batch={args.batch_size} "
        f"threads={args.threads} repeats={args.repeats}"
    )
    print(
        f"(a) raw baseline   wall {ta:7.2f} s  cpu {ca:7.2f} s  {n / ta:5.0f} img/s  RSS {max(mem_a):5.0f}M"
    )
    print(
        f"(b) main pass      wall {tb:7.2f} s  cpu {cb:7.2f} s  {n / tb:5.0f} img/s  RSS {max(mem_b):5.0f}M"
    )
    print(f"(c) full diagnose  wall {c:7.2f} s  cpu {cpu_c:7.2f} s  {n / c:5.0f} img/s  RSS {mem_c:5.0f}M")
    print(
        "wall runs (a): " + ", ".join(f"{t:.1f}" for t in a) + "   (b): " + ", ".join(f"{t:.1f}" for t in b)
    )
    print(f"ratio b/a = {tb / ta:.3f} wall, {cb / ca:.3f} cpu   (target <= 1.10)")
    print(f"ratio c/a = {c / ta:.3f} wall, {cpu_c / ca:.3f} cpu   (target <= 2.50)")
    bookkeeping(train, val, args, ta)
    checks = {k: v for k, v in diag.run["timings"].items() if k.startswith("check_")}
    print("check seconds: " + ", ".join(f"{k[6:]}={v:.1f}" for k, v in checks.items()))
    if args.device.startswith("cuda"):
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


def bookkeeping(train, val, args, ta: float) -> None:
    """(d) kddoctor's own per-batch work, measured with both models replaced by a near-free head.

    Wall-clock ratios of two 40 s loops carry ±10 % noise here; this difference of two fast loops
    isolates what the main pass adds (metrics, input statistics, per-sample columns, feature taps).
    """

    def tiny() -> torch.nn.Module:
        head = [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10)]
        return torch.nn.Sequential(*head).to(args.device).eval()

    t, s = tiny(), tiny()
    raw = min(timed(lambda: raw_pass(t, s, [train, val], args.device))[0] for _ in range(3))
    ours = min(timed(lambda: diagnose(t, s, train, val, device=args.device, checks=[]))[0] for _ in range(3))
    extra = max(0.0, ours - raw)
    line = (
        f"(d) bookkeeping, near-free models: main pass {ours:.2f} s vs raw loop {raw:.2f} s -> +{extra:.2f} s"
    )
    print(line + f"; with the real models' raw time {ta:.2f} s: estimated b/a = {(ta + extra) / ta:.3f}")


if __name__ == "__main__":
    main()
