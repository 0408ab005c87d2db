"""Shared fixtures: a persistent model cache, scenario diagnoses computed once per session."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("KDDOCTOR_CACHE", str(ROOT / ".pytest_cache" / "kddoctor-models"))


@functools.cache
def scenario(name: str):
    """Diagnosis of a planted scenario (quick budgets), computed once per session."""
    from kddoctor.zoo import images as scenarios

    return scenarios.run(name, quick=True)


@pytest.fixture(scope="session")
def diagnose_scenario():
    return scenario


@pytest.fixture(scope="session")
def demo_paths():
    from kddoctor.zoo import demo

    return demo.build_demo_pair()


@pytest.fixture
def specs_run(monkeypatch):
    """runner.diagnose_specs stopped short of the diagnosis: the models, DataBundle and keywords."""
    from kddoctor import runner
    from kddoctor.config import DiagnoseConfig

    def run(teacher: str, student: str, **kw) -> dict:
        seen: dict = {}
        monkeypatch.setattr(runner, "diagnose_bundle", lambda t, s, b, **k: seen.update(t=t, s=s, b=b, **k))
        args = {"teacher_ckpt": None, "student_ckpt": None, "data": None, "data_dir": None, "data_args": []}
        args.update(num_classes=None, config=DiagnoseConfig(batch_size=4, seed=3))
        runner.diagnose_specs(teacher, student, **{**args, **kw})
        return seen

    return run
