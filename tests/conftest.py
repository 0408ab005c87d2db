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
    from kddoctor import scenarios

    return scenarios.run(name, quick=True)


@pytest.fixture(scope="session")
def diagnose_scenario():
    return scenario


@pytest.fixture(scope="session")
def demo_paths():
    from kddoctor import demo

    return demo.build_demo_pair()
