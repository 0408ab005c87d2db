"""A causal-LM diagnose as the train split grows 4x and 16x beyond its default sample, side by side with a
raw teacher + student forward over the very tokens it reads.

Each size runs in a fresh process. The data is a lazy map-style set of N random-token sequences (it
takes no memory; the default train sample, 4,096 sequences, is drawn by dataset index without reading
the rest) and a fixed val split. In that process: a warm-up, then the raw baseline (both models'
forward over the sampled train sequences and val, nothing else), then the default `diagnose` (quick
budgets off: the probes run by their time budget, 0.1x the main pass each). Printed: diagnose time,
the main pass (`eval_*` timings) and the raw forward time, their ratios, and the time against the
smallest size (targets: flat past the sample, main pass <= 1.15x raw, full diagnose <= 2x raw).

    python bench/lm_scaling.py                             # 4,096 / 16,384 / 65,536 sequences of 256
    python bench/lm_scaling.py --sizes 4096 --seq 256      # the 1M-token point alone
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = (4096, 16384, 65536)

CHILD = """
import json, sys, time, torch
sys.path.insert(0, {here!r})
from kddoctor import diagnose
from kddoctor.config import LM_TRAIN_SEQUENCES
from kddoctor._sampling import subset_loader
from kddoctor.zoo.tiny_lm import TinyGPT
torch.set_num_threads({threads})

class Tokens(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        self.n, self.seed = n, seed
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        ids = torch.randint(0, {vocab}, ({seq},), generator=g)
        return {{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}}

mk = lambda ds: torch.utils.data.DataLoader(ds, batch_size={batch})
torch.manual_seed(0)
dev = torch.device({device!r})
t = TinyGPT(width={tw}, layers={tl}, heads=4, vocab={vocab}, seq={seq}).eval().to(dev)
s = TinyGPT(width={sw}, layers={sl}, heads=4, vocab={vocab}, seq={seq}).eval().to(dev)
train, val = mk(Tokens({n_train}, 0)), mk(Tokens({n_val}, 1))

def raw(loaders):  # both forwards as a KD step runs them (bf16 autocast on CUDA, as diagnose does)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=dev.type == "cuda"):
        for loader in loaders:
            for b in loader:
                ids, mask = (b[k].to(dev, non_blocking=True) for k in ("input_ids", "attention_mask"))
                t(ids, mask); s(ids, mask)
    if dev.type == "cuda":
        torch.cuda.synchronize()

raw([[next(iter(val))]])  # warm-up
sub = subset_loader(train, LM_TRAIN_SEQUENCES, 0)
start = time.perf_counter()
raw([sub[0] if sub else train, val])
raw_s = time.perf_counter() - start
start = time.perf_counter()
d = diagnose(t, s, train, val, task="causal-lm", device={device!r}, teacher_cache=None)
ours = time.perf_counter() - start
timings = d.run["timings"]
main = sum(v for k, v in timings.items() if k.startswith("eval_"))
checks = {{k.removeprefix("check_"): v for k, v in timings.items() if k.startswith("check_")}}
print(json.dumps({{"diagnose_s": ours, "raw_s": raw_s, "main_s": main, "n": d.run["n"],
                  "sequences": d.run["sequences"], "checks_s": checks}}))
"""


def measure(n_train: int, a: argparse.Namespace) -> dict:
    code = CHILD.format(
        here=str(HERE),
        n_train=n_train,
        n_val=a.n_val,
        threads=a.threads,
        device=a.device,
        batch=a.batch_size,
        vocab=a.vocab,
        seq=a.seq,
        tw=a.teacher[0],
        tl=a.teacher[1],
        sw=a.student[0],
        sl=a.student[1],
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--n-val", type=int, default=512)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--teacher", type=int, nargs=2, default=(256, 4), metavar=("WIDTH", "LAYERS"))
    ap.add_argument("--student", type=int, nargs=2, default=(128, 2), metavar=("WIDTH", "LAYERS"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    print(
        f"TinyGPT {a.teacher[0]}x{a.teacher[1]} -> {a.student[0]}x{a.student[1]}, vocab {a.vocab}, "
        f"{a.seq} tokens a sequence, val {a.n_val} sequences, {a.device}, {a.threads} CPU threads"
    )
    print("train split | tokens read | diagnose s | main pass s | raw fwd s | main/raw | full/raw | vs first")
    rows = []
    for n in a.sizes:
        r = measure(n, a)
        rows.append(r)
        print(
            f"{n:11,d} | {r['n']['train']:11,d} | {r['diagnose_s']:10.1f} | {r['main_s']:11.1f} | "
            f"{r['raw_s']:9.1f} | {r['main_s'] / r['raw_s']:8.2f} | {r['diagnose_s'] / r['raw_s']:8.2f} | "
            f"{r['diagnose_s'] / rows[0]['diagnose_s']:8.2f}",
            flush=True,
        )
        print("    checks s: " + ", ".join(f"{k} {v:.1f}" for k, v in r["checks_s"].items()), flush=True)


if __name__ == "__main__":
    main()
