"""The README's commands are the ones CI runs, and its documented failure table matches real tests."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_starts_with_setup_and_test_commands():
    demo, tests = readme_commands()
    assert "python3 -m venv .venv" in demo and demo.strip().endswith("kddoctor demo")
    assert "python3 -m venv .venv" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1].strip() in ci.splitlines()


def test_failure_table_rows_name_existing_tests():
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| .+? \| .+? \| `(tests/[\w/]+\.py)::(\w+)` \|$", text, flags=re.M)
    assert len(rows) >= 15
    for path, name in rows:
        assert f"def {name}(" in (ROOT / path).read_text(), (path, name)
