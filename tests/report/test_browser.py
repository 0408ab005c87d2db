"""The demo's report opens offline in headless Chromium: every plot drawn, no console error."""

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kddoctor.cli import app
from kddoctor.zoo.demo import demo_command

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("KDDOCTOR_REQUIRE_BROWSER") == "1"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser


def _chromium():
    if CHROMIUM is None:
        if REQUIRED:
            pytest.fail("KDDOCTOR_REQUIRE_BROWSER=1 but no chromium on PATH")
        pytest.skip("chromium not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if REQUIRED:
            pytest.fail("playwright is not installed")
        pytest.skip("playwright not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def demo_report(demo_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("browser")
    res = CliRunner().invoke(
        app, ["diagnose", *demo_command(*demo_paths), "--quick", "--quiet", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    return out / "report.html"


@pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}], ids=["laptop", "phone"]
)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_report_renders_offline(demo_report, viewport, scheme):
    sync_playwright = _chromium()
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ctx = browser.new_context(offline=True, viewport=viewport, color_scheme=scheme)
        page = ctx.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(demo_report.as_uri())
        page.wait_for_function("document.body.dataset.plotsDrawn !== undefined", timeout=60_000)
        total = page.eval_on_selector_all("div.plot[data-fig]", "els => els.length")
        drawn = page.eval_on_selector_all(
            "div.plot[data-fig]", "els => els.filter(e => e.querySelector('svg')).length"
        )
        verdict = page.inner_text("#verdict .verdict")
        shots = Path(os.environ.get("KDDOCTOR_SCREENSHOTS", demo_report.parent))
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"report-{viewport['width']}-{scheme}.png"))
        browser.close()
    assert total >= 8 and drawn == total, (drawn, total)
    assert not errors, errors
    assert all(u.split(":")[0] in ("file", "data", "blob") for u in requests), requests
    assert "Overfitting" in verdict


def test_hostile_strings_stay_inert_in_the_browser(tmp_path):
    sync_playwright = _chromium()
    from kddoctor import diagnose
    from kddoctor.report import render_html
    from kddoctor.zoo import demo
    from kddoctor.zoo import images as scenarios

    _, teacher = demo.build_teacher()
    student = scenarios.build_student(scenarios.get("healthy_cnn").recipe, teacher)
    data = demo.digits_loaders()
    evil = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'
    d = diagnose(
        teacher,
        student,
        data["train"],
        data["val"],
        quick=True,
        class_names=[evil] * 10,
        teacher_spec=evil,
        student_spec=evil,
        checks=["calibration"],
    )
    path = tmp_path / "evil.html"
    path.write_text(render_html(d))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(offline=True).new_page()
        page.goto(path.as_uri())
        page.wait_for_function("document.body.dataset.plotsDrawn !== undefined", timeout=60_000)
        pwned = page.evaluate("window.__pwned")
        title = page.title()
        browser.close()
    assert pwned is None and evil in title and json.dumps(evil)
