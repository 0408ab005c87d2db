"""The command line: contract flags, results.json schema, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kddoctor import __version__, list_checks
from kddoctor.cli import app
from kddoctor.zoo.demo import DEMO_STUDENT_SUBSET, demo_command

runner = CliRunner()


def diagnose_args(demo_paths, out, *extra):
    return ["diagnose", *demo_command(*demo_paths), "--quick", "--quiet", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def demo_run(demo_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_run")
    res = runner.invoke(app, diagnose_args(demo_paths, out, "--save-logits"))
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "results.json").read_text())


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"kddoctor {__version__}"
    out = subprocess.run([sys.executable, "-m", "kddoctor", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_results_json_follows_the_contract(demo_run):
    _, doc = demo_run
    assert doc["schema"] == "kddoctor/results/v1"
    assert {
        "kddoctor_version",
        "torch_version",
        "device",
        "teacher",
        "student",
        "alpha",
        "alpha_on",
        "temperature",
        "t2",
        "seconds",
        "n",
    } <= set(doc["run"])
    assert doc["run"]["n"] == {"train": DEMO_STUDENT_SUBSET, "val": 360}
    for split in ("train", "val"):
        m = doc["metrics"][split]
        for model in ("teacher", "student"):
            assert set(m[model]) == {"loss", "acc", "ece"}
        assert 0 <= m["agreement"] <= 1 and m["kl"] >= 0
    assert [c["id"] for c in doc["checks"]] == list_checks()  # every registered check, in order
    for c in doc["checks"]:
        assert c["status"] in ("pass", "warn", "fail", "skipped", "error") and c["summary"] and c["evidence"]
    ids = [c["id"] for c in doc["causes"]]
    assert sorted(ids) == sorted(
        ["overfitting", "distribution_mismatch", "alpha_imbalance", "insufficient_capacity", "optimization"]
    )
    scores = [c["score"] for c in doc["causes"]]
    assert scores == sorted(scores, reverse=True)
    assert all(c["likely"] == (c["score"] >= 0.5) for c in doc["causes"])
    assert doc["gate"] == {"passed": True, "failures": []}


def test_demo_is_diagnosed_as_overfitting(demo_run):
    _, doc = demo_run
    assert doc["causes"][0]["id"] == "overfitting" and doc["causes"][0]["likely"]
    assert doc["metrics"]["val"]["student"]["loss"] > 10 * doc["metrics"]["train"]["student"]["loss"]


def test_save_logits(demo_run):
    import numpy as np

    out, doc = demo_run
    z = np.load(out / "logits.npz")
    assert z["val_teacher"].shape == (360, 10) and z["train_targets"].shape == (DEMO_STUDENT_SUBSET,)


def test_report_files_written(demo_run):
    out, _ = demo_run
    assert (out / "report.html").stat().st_size > 0 and (out / "report.md").read_text().startswith(
        "## kddoctor"
    )


def test_convention_flags_are_recorded(demo_paths, tmp_path):
    res = runner.invoke(
        app,
        diagnose_args(
            demo_paths,
            tmp_path,
            "--alpha",
            "0.3",
            "--alpha-on",
            "ce",
            "--no-t2",
            "--kd-reduction",
            "mean",
            "--limit",
            "100",
        ),
    )
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "results.json").read_text())["run"]
    assert (run["alpha"], run["alpha_on"], run["t2"], run["kd_reduction"]) == (0.3, "ce", False, "mean")
    said = run["convention"]["sentence"]
    assert "loss = 0.3*CE + (1-0.3)*KD" in said and "not multiplied by T²" in said
    assert run["convention"]["user"] == {"alpha": 0.3, "T": 4.0} and run["convention"]["ce_weight"] == 0.3
    assert run["n"] == {"train": 100, "val": 100}


def test_bad_input_is_one_line_exit_2_and_keeps_previous_report(demo_paths, tmp_path):
    (tmp_path / "results.json").write_text("previous")
    args = diagnose_args(demo_paths, tmp_path)
    args[args.index("--student-ckpt") + 1] = str(tmp_path / "missing.pt")
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert (
        res.stderr.count("\n") == 1 and "missing.pt not found" in res.stderr and "Traceback" not in res.stderr
    )
    assert (tmp_path / "results.json").read_text() == "previous"


@pytest.mark.parametrize(
    "flag,value,match",
    [
        ("--alpha", "1.5", "--alpha must be in"),
        ("--alpha-on", "both", "--alpha-on must be"),
        ("--kd-reduction", "avg", "--kd-reduction must be"),
        ("--device", "tpu", "--device"),
        ("--temperature", "0", "--temperature must be"),
        ("--temperature", "nan", "--temperature must be a finite number"),
        ("--temperature", "inf", "--temperature must be a finite number"),
        ("--alpha", "nan", "--alpha must be"),
        ("--seed", "-1", "--seed must be"),
        ("--batch-size", "0", "--batch-size must be"),
        ("--limit", "0", "--limit must be"),
        ("--num-classes", "0", "--num-classes must be"),
        ("--ce-weight", "0.5", "--ce-weight needs its pair"),
        ("--convention", "mdistiller", "--alpha conflicts with --convention mdistiller"),
        ("--convention", "fitnets", "--preset (--convention) must be one of"),
        ("--kd-reduction", "sum", "pass --train-batch-size"),
        ("--train-batch-size", "0", "--train-batch-size must be"),
        ("--train-samples", "0", "--train-samples must be a positive integer or 'all'"),
        ("--train-samples", "abc", "--train-samples must be a positive integer or 'all'"),
        ("--val-samples", "-3", "--val-samples must be a positive integer or 'all'"),
        ("--probe-seconds", "0", "--probe-seconds must be > 0"),
    ],
)
def test_bad_option_values(demo_paths, tmp_path, flag, value, match):
    res = runner.invoke(app, diagnose_args(demo_paths, tmp_path, flag, value))
    assert res.exit_code == 2 and match in res.stderr
    # refused before any work: a missing checkpoint is never reached
    args = diagnose_args(demo_paths, tmp_path, flag, value)
    args[args.index("--teacher-ckpt") + 1] = str(tmp_path / "missing.pt")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and match in res.stderr and res.stderr.count("\n") == 1


def test_unwritable_out_and_junit_are_refused_before_the_run(demo_paths, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    missing_ckpt = str(tmp_path / "missing.pt")  # reached only if the run started
    for extra, flag in (
        (["--out", str(blocker / "sub")], "--out"),
        (["--junit", str(blocker / "j.xml")], "--junit"),
        (["--junit", str(tmp_path)], "--junit"),
    ):
        args = diagnose_args(demo_paths, tmp_path / "o", *extra)
        args[args.index("--teacher-ckpt") + 1] = missing_ckpt
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and flag in res.stderr and "missing.pt" not in res.stderr, res.stderr
        if flag == "--junit":
            assert "--out" not in res.stderr
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == [blocker]


def test_debug_shows_traceback(demo_paths, tmp_path):
    args = diagnose_args(demo_paths, tmp_path, "--debug")
    args[args.index("--teacher-ckpt") + 1] = str(tmp_path / "nope.pt")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "Traceback" in res.stderr


def test_data_and_data_dir_are_exclusive(demo_paths, tmp_path):
    res = runner.invoke(app, diagnose_args(demo_paths, tmp_path, "--data-dir", str(tmp_path)))
    assert res.exit_code == 2 and "exactly one of --data" in res.stderr


def test_report_is_rebuilt_from_results_json_alone(demo_run, tmp_path):
    out, _ = demo_run
    res = runner.invoke(app, ["report", str(out / "results.json"), "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    for name in ("report.html", "report.md"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    res = runner.invoke(app, ["report", str(bad)])
    assert res.exit_code == 2 and "not a kddoctor results.json" in res.output


def test_report_reads_results_from_the_previous_release(demo_run, tmp_path):
    """Files written before the convention type, thresholds and plot details still render."""
    _, doc = demo_run
    old = json.loads(json.dumps(doc))
    old.pop("details")
    old["run"]["convention"] = old["run"]["convention"]["sentence"]
    for c in old["causes"]:
        c.pop("remedy_lang")
    for f in old["checks"]:
        f.pop("thresholds", None)
        if f["id"] == "alpha_sensitivity":
            f["evidence"]["recommended"] = {"alpha": 0.5, "alpha_on": "kd", "temperature": 4.0}
    (tmp_path / "results.json").write_text(json.dumps(old))
    res = runner.invoke(app, ["report", str(tmp_path / "results.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "alpha=0.5 on KD" in (tmp_path / "report.html").read_text()


def test_a_run_outside_a_terminal_logs_one_line_per_phase(demo_paths, tmp_path):
    """Redirected (a log, CI), a run is not silent: each pass says when it starts and ends, each check when
    it ends."""
    args = [a for a in diagnose_args(demo_paths, tmp_path) if a != "--quiet"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert any(line.endswith("...") and "train: teacher + student (" in line for line in lines), lines
    passes = [line for line in lines if "train: teacher + student:" in line]
    assert len(passes) == 1 and " samples, " in passes[0] and "done in" in passes[0]
    checks = [line for line in lines if line.split("] ", 1)[-1].startswith("check ")]
    assert len(checks) == len(list_checks()) and all(line.endswith(" s") for line in checks), lines


def test_log_lines_count_a_causal_lm_pass_in_sequences_and_skip_short_probes():
    import io

    from rich.console import Console

    from kddoctor._progress import progress

    buf = io.StringIO()
    with progress("lines", Console(file=buf, width=200)) as bar:
        task = bar.add_task("val: teacher + student", total=512, unit="sequences")
        bar.advance(task, 512)
        bar.remove_task(task)
        bar.remove_task(bar.add_task("probe: alpha/T sweep (16 steps)", total=16))  # well under a second
        unsized = bar.add_task("train: teacher + student", total=None, unit="sequences")  # a list of batches
        bar.advance(unsized, 64)
        bar.remove_task(unsized)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].endswith("val: teacher + student (512 sequences) ...")
    assert "val: teacher + student: 512 sequences, " in lines[1] and lines[1].endswith(" s")
    assert (
        lines[2].endswith("train: teacher + student ...")
        and "train: teacher + student: 64 sequences, " in lines[3]
    )


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["gate", "results.json", "--policy"], "Option '--policy' requires an argument"),
        (["diagnose", "--bogus"], "No such option: --bogus"),
        (["diagnose", "--alpha", "x"], "Invalid value for '--alpha'"),
        (["gate", "results.json"], "Missing option '--policy'"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(argv, said):
    """An unknown option or a missing value, as the console script prints it: one line, no box."""
    out = subprocess.run([sys.executable, "-m", "kddoctor", *argv], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kddoctor: error: ") and said in lines[0], out.stderr
