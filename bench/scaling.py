"""Diagnose time and peak memory as the train split grows 20k -> 80k -> 320k -> 1.28M samples.

Each size runs in a fresh process (so memory peaks do not mix) on lazily generated 3x32x32 digits
(the data set takes no memory) with a fixed val split. In that process, after a short warm-up, the
raw baseline runs: teacher + student forward, nothing else, over exactly the samples the diagnose
reads (its train sample, drawn by the same seeded stratified indices, and the whole val split); then
the full default diagnose. The default train sample (50,000) makes everything beyond it flat.

    python bench/scaling.py                                  # resnet18 / resnet10t, CPU, all sizes
    python bench/scaling.py --sizes 20480 --repeats 1        # the 20k point alone
    python bench/scaling.py --device cuda --channels-last    # the GPU run (bf16 autocast)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = (20_480, 81_920, 327_680, 1_310_720)

CHILD = """
import itertools, json, sys, time, torch
sys.path.insert(0, {here!r})
from _common import LazyDigits, PeakRSS, raw_pass
import timm
from kddoctor import diagnose
from kddoctor._sampling import subset_loader
from kddoctor.config import TRAIN_SAMPLES
torch.set_num_threads({threads})
mk = lambda ds: torch.utils.data.DataLoader(ds, batch_size={batch})
torch.manual_seed(0)
t = timm.create_model({teacher!r}, pretrained=False, num_classes=10).eval().to({device!r})
s = timm.create_model({student!r}, pretrained=False, num_classes=10).eval().to({device!r})
train, val = mk(LazyDigits({n_train}, 0)), mk(LazyDigits({n_val}, 1))
raw_pass(t, s, [itertools.islice(val, 4)], {device!r})  # warm-up: kernels chosen, caches filled
sub = subset_loader(train, TRAIN_SAMPLES, 0)  # the very sample the diagnose (seed 0) reads
start = time.perf_counter()
raw_pass(t, s, [sub[0] if sub else train, val], {device!r})
raw = time.perf_counter() - start
with PeakRSS() as rss:
    start = time.perf_counter()
    d = diagnose(t, s, train, val, device={device!r}, channels_last={channels_last})
    ours = time.perf_counter() - start
cuda = torch.cuda.max_memory_allocated() / 2**20 if {device!r}.startswith("cuda") else None
probes = {{k.removeprefix("check_"): v for k, v in d.run["timings"].items() if k.startswith("check_")}}
print(json.dumps({{"diagnose_s": ours, "raw_s": raw, "rss_mib": rss.peak, "cuda_mib": cuda,
                  "n": d.run["n"], "checks_s": probes,
                  "eval_s": {{k: v for k, v in d.run["timings"].items() if k.startswith("eval_")}}}}))
"""


def measure(n_train: int, args: argparse.Namespace) -> dict:
    code = CHILD.format(
        here=str(HERE),
        n_train=n_train,
        n_val=args.n_val,
        device=args.device,
        threads=args.threads,
        batch=args.batch_size,
        teacher=args.teacher,
        student=args.student,
        channels_last=args.channels_last,
    )
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["diagnose_s"])  # the least disturbed run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--n-val", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--teacher", default="resnet18")
    ap.add_argument("--student", default="resnet10t")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    print(f"{args.teacher} -> {args.student}, {args.device}, val {args.n_val}, batch {args.batch_size}")
    print("train split | read (train+val) | diagnose s | raw fwd s | ratio | vs smallest | peak RSS MiB")
    rows = []
    for n in args.sizes:
        r = measure(n, args)
        rows.append(r)
        read = r["n"]["train"] + r["n"]["val"]
        print(
            f"{n:11,d} | {read:16,d} | {r['diagnose_s']:10.1f} | {r['raw_s']:9.1f} | "
            f"{r['diagnose_s'] / r['raw_s']:5.2f} | {r['diagnose_s'] / rows[0]['diagnose_s']:11.2f} | "
            f"{r['rss_mib']:8.0f}" + (f"  (CUDA {r['cuda_mib']:.0f} MiB)" if r["cuda_mib"] else ""),
            flush=True,
        )
        print("    checks s: " + ", ".join(f"{k} {v:.1f}" for k, v in r["checks_s"].items()), flush=True)
    if len(rows) >= 2:
        last, prev = rows[-1], rows[-2]
        print(
            f"largest / next: time {last['diagnose_s'] / prev['diagnose_s']:.2f}x (target <= 1.2), "
            f"memory {last['rss_mib'] / prev['rss_mib']:.2f}x"
        )


if __name__ == "__main__":
    main()
