"""Teacher-output cache, CUDA-OOM micro-batching, and torchrun sharding (2 processes, gloo on CPU)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from kddoctor import diagnose
from kddoctor.cli import app
from kddoctor.zoo import demo
from kddoctor.zoo import images as scenarios
from kddoctor.zoo.demo import demo_command

runner = CliRunner()


def _pair():
    _, teacher = demo.build_teacher()
    return teacher, scenarios.build_student(scenarios.get("healthy_cnn").recipe, teacher)


class CountingTeacher(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.rows = model, 0, 0
        self.fc = model.fc  # the classifier the feature tap finds

    def forward(self, x):
        self.calls += 1
        self.rows += len(x)
        return self.model(x)


def test_second_run_skips_the_teacher_and_matches(tmp_path):
    teacher, student = _pair()
    data = demo.digits_loaders()
    counting = CountingTeacher(teacher)
    kw = dict(quick=True, teacher_cache=tmp_path / "cache", teacher_spec="t", checks=["capacity_probe"])
    first = diagnose(counting, student, data["train"], data["val"], **kw)
    rows_first = counting.rows
    counting.rows = 0
    second = diagnose(counting, student, data["train"], data["val"], **kw)
    n = sum(len(data[s].dataset) for s in ("train", "val"))
    # the main pass runs the teacher only on the rows of cached batches that can enter the bounded
    # probe subset (their features); the probes' own teacher rows are the same in both runs
    probe_rows = rows_first - n
    assert probe_rows < counting.rows < rows_first
    assert second.run["timings"]["teacher_cache"]["val"] == {"hits": len(data["val"]), "misses": 0}
    assert second.metrics == first.metrics
    assert second.finding("capacity_probe").evidence == first.finding("capacity_probe").evidence


def test_changed_data_or_teacher_never_reuses_stale_logits(tmp_path):
    teacher, student = _pair()
    kw = dict(quick=True, teacher_cache=tmp_path, teacher_spec="t", checks=[])
    d = demo.digits_loaders()
    diagnose(teacher, student, d["train"], d["val"], **kw)
    shifted = demo.digits_loaders(val_normalization="none")
    again = diagnose(teacher, student, shifted["train"], shifted["val"], **kw)
    assert again.run["timings"]["teacher_cache"]["val"]["hits"] == 0
    fresh = diagnose(teacher, student, shifted["train"], shifted["val"], quick=True, checks=[])
    assert again.metrics == fresh.metrics
    other = demo.teacher_cnn()
    diff = diagnose(other.eval(), student, d["train"], d["val"], **kw)
    assert diff.run["timings"]["teacher_cache"]["train"]["hits"] == 0


class OOMAbove(torch.nn.Module):
    """Raises CUDA's out-of-memory error for batches above `limit` rows, like a GPU would."""

    def __init__(self, model, limit):
        super().__init__()
        self.model, self.limit = model, limit
        self.fc = model.fc

    def forward(self, x):
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(x)


def test_out_of_memory_splits_into_micro_batches():
    teacher, student = _pair()
    data = demo.digits_loaders(batch_size=128)
    ref = diagnose(teacher, student, data["train"], data["val"], checks=[])
    got = diagnose(OOMAbove(teacher, 40), student, data["train"], data["val"], checks=[])
    assert got.run["micro_batch_splits"] >= 1
    for split in ("train", "val"):
        for k in ("agreement", "kl"):
            assert got.metrics[split][k] == pytest.approx(ref.metrics[split][k], abs=1e-5)


def _torchrun(args: list[str], out, timeout: int = 600) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m kddoctor diagnose ARGS --out OUT --device cpu` (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    cmd += ["-m", "kddoctor", "diagnose", *args, "--out", str(out), "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_torchrun_two_ranks_match_one_process_for_a_causal_lm(tmp_path):
    """The token pass sharded over 2 gloo ranks: every metric, every check and cause as in 1 process (the
    probes' rows are a content-keyed sample merged across ranks, so they are the same rows)."""
    from kddoctor.zoo import lm as lm_scenarios

    lm_scenarios.teacher()  # trained once (cached), before the ranks start
    lm_scenarios.student("healthy")
    spec = "kddoctor.zoo.lm"
    args = ["--task", "causal-lm", "--teacher", f"{spec}:zoo_teacher", "--student", f"{spec}:zoo_student"]
    args += ["--data", f"{spec}:loaders", "--alpha", "0.5", "--temperature", "2", "--quick", "--quiet"]
    args += ["--no-cache", "--data-arg", "sequences=128"]
    single = tmp_path / "single"
    res = runner.invoke(app, ["diagnose", *args, "--out", str(single), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    proc = _torchrun(args, tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "results.json").read_text())
    b = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert b["run"]["world_size"] == 2 and b["run"]["n"] == a["run"]["n"]
    assert b["run"]["sequences"] == a["run"]["sequences"]
    assert sum(b["run"]["rank_samples"]["train"]) == a["run"]["sequences"]["train"]
    for split in ("train", "val"):
        for model in ("teacher", "student"):
            for k in ("loss", "acc", "ece", "perplexity"):
                assert b["metrics"][split][model][k] == pytest.approx(a["metrics"][split][model][k], abs=1e-6)
        for k in ("agreement", "kl", "top_k_overlap"):
            assert b["metrics"][split][k] == pytest.approx(a["metrics"][split][k], abs=1e-6)
    assert [(c["id"], c["status"]) for c in b["checks"]] == [(c["id"], c["status"]) for c in a["checks"]]
    assert [c["id"] for c in b["causes"]] == [c["id"] for c in a["causes"]]
    for ca, cb in zip(a["causes"], b["causes"], strict=True):
        assert cb["score"] == pytest.approx(ca["score"], abs=1e-3)


def test_torchrun_two_ranks_match_one_process(demo_paths, tmp_path):
    args = [*demo_command(*demo_paths), "--quick", "--quiet", "--no-cache", "--data-arg", "batch_size=32"]
    single = tmp_path / "single"
    assert runner.invoke(app, ["diagnose", *args, "--out", str(single)]).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist = tmp_path / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={port}",
            "-m",
            "kddoctor",
            "diagnose",
            *args,
            "--out",
            str(dist),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "results.json").read_text())
    b = json.loads((dist / "results.json").read_text())
    assert b["run"]["world_size"] == 2 and b["run"]["n"] == a["run"]["n"]
    for split in ("train", "val"):
        ranks = b["run"]["rank_samples"][split]
        assert sum(ranks) == a["run"]["n"][split] and min(ranks) >= 0.4 * sum(ranks)
        for model in ("teacher", "student"):
            for k in ("loss", "acc"):
                assert b["metrics"][split][model][k] == pytest.approx(a["metrics"][split][model][k], abs=1e-5)
            # ECE bins a confidence: two ranks' thread counts round a few logits otherwise, and a confidence
            # on a bin edge moves one sample's weight (about 1/n) between bins
            assert b["metrics"][split][model]["ece"] == pytest.approx(
                a["metrics"][split][model]["ece"], abs=1e-3
            )
        for k in ("agreement", "kl"):
            assert b["metrics"][split][k] == pytest.approx(a["metrics"][split][k], abs=1e-5)
    assert [c["id"] for c in b["checks"]] == [c["id"] for c in a["checks"]]
