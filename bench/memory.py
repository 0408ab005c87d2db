"""Peak memory of a diagnosis at N and 4N samples: it must stay flat beyond a few floats per sample.

Each size runs in a fresh process (so peaks do not mix) on a lazily generated data set (so the data
itself takes no memory); the full default diagnose runs, probes included.

    python bench/memory.py                     # N = 5,120 (train 4,096 + val 1,024) and 4N, on CPU
    python bench/memory.py --device cuda       # also peak CUDA memory
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import json, sys, torch
sys.path.insert(0, {here!r})
from _common import LazyDigits, models, max_rss_mib
from kddoctor import diagnose
torch.set_num_threads({threads})
mk = lambda ds: torch.utils.data.DataLoader(ds, batch_size=256)
t, s = models({device!r})
d = diagnose(t, s, mk(LazyDigits({n_train}, 0)), mk(LazyDigits({n_val}, 1)), device={device!r})
cuda = torch.cuda.max_memory_allocated() / 2**20 if {device!r}.startswith("cuda") else None
print(json.dumps({{"rss_mib": max_rss_mib(), "cuda_mib": cuda, "n": d.run["n"]}}))
"""


def measure(n_train: int, n_val: int, device: str, threads: int) -> dict:
    code = CHILD.format(here=str(HERE), n_train=n_train, n_val=n_val, device=device, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-train", type=int, default=4096)
    ap.add_argument("--n-val", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    small = measure(args.n_train, args.n_val, args.device, args.threads)
    big = measure(4 * args.n_train, 4 * args.n_val, args.device, args.threads)
    n = args.n_train + args.n_val
    print(f"device={args.device} full default diagnose, lazily generated 3x32x32 digits")
    print(
        f"N  = {n:6d}: peak RSS {small['rss_mib']:7.0f} MiB"
        + (f", peak CUDA {small['cuda_mib']:.0f} MiB" if small["cuda_mib"] else "")
    )
    print(
        f"4N = {4 * n:6d}: peak RSS {big['rss_mib']:7.0f} MiB"
        + (f", peak CUDA {big['cuda_mib']:.0f} MiB" if big["cuda_mib"] else "")
    )
    print(f"ratio 4N/N = {big['rss_mib'] / small['rss_mib']:.3f}   (target <= 1.10)")
    if small["cuda_mib"]:
        print(f"CUDA ratio 4N/N = {big['cuda_mib'] / small['cuda_mib']:.3f}")


if __name__ == "__main__":
    main()
