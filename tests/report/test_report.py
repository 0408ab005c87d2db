"""The HTML report stands alone, escapes user strings, and stays the same size as data grows."""

import re

import pytest
import torch

from kddoctor import diagnose
from kddoctor.report import render_html, render_markdown
from kddoctor.report.html import script_json
from kddoctor.zoo import demo
from kddoctor.zoo import images as scenarios

HOSTILE = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">'


def _pair():
    _, teacher = demo.build_teacher()
    return teacher, scenarios.build_student(scenarios.get("healthy_cnn").recipe, teacher)


def _repeat(loader, k):
    ds = torch.utils.data.ConcatDataset([loader.dataset] * k)
    return torch.utils.data.DataLoader(ds, batch_size=128)


@pytest.fixture(scope="module")
def hostile_diag():
    teacher, student = _pair()
    data = demo.digits_loaders()
    names = [f"{HOSTILE}{i}" for i in range(10)]
    return diagnose(
        teacher,
        student,
        data["train"],
        data["val"],
        quick=True,
        class_names=names,
        teacher_spec=f"timm:{HOSTILE}",
        student_spec=f"evil.py:{HOSTILE}",
    )


def test_hostile_strings_are_escaped(hostile_diag):
    html = render_html(hostile_diag)
    assert "<script>window.__pwned" not in html and "<img src=x" not in html
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned=1" in html
    # exactly the page's own scripts: figure data, plotly blob, the driver
    n_figs = len(re.findall(r'<script type="application/json" id="fig-', html))
    assert html.count("<script") == n_figs + 2


def _md_to_html(md: str) -> str:
    """What a Markdown viewer makes of report.md (raw HTML allowed, as on GitHub before sanitizing)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(md)


def test_markdown_escapes_hostile_strings(hostile_diag):
    html = _md_to_html(render_markdown(hostile_diag))
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;window.__pwned=1" in html


def test_markdown_is_markdown_escaped_not_html_escaped(hostile_diag):
    md = render_markdown(hostile_diag)
    assert "reduced by 'batchmean'" in md and "&#x27;" not in md and "&lt;" not in md
    assert "reduced by 'batchmean'" in _md_to_html(md)
    assert "\\<script\\>" in md  # shown as written, never live


def test_script_json_cannot_close_its_element():
    text = str(script_json({"a": "</script><b>&"}))
    assert "<" not in text and ">" not in text and "&" not in text


def test_plotly_inlined_once_and_no_network(hostile_diag):
    html = render_html(hostile_diag)
    assert html.count('id="plotly-gz"') == 1
    assert "cdn.plot.ly" not in html and not re.search(r'<(script|link|img)[^>]+(src|href)="https?:', html)
    assert 'src="https://cdn.plot.ly/plotly-' in render_html(hostile_diag, cdn=True)


def test_report_size_is_flat_when_data_grows_4x():
    teacher, student = _pair()
    data = demo.digits_loaders()
    sizes = []
    for k in (1, 4):
        d = diagnose(teacher, student, _repeat(data["train"], k), _repeat(data["val"], k), quick=True)
        assert d.run["n"]["val"] == 360 * k
        sizes.append(len(render_html(d)))
    assert abs(sizes[1] - sizes[0]) / sizes[0] < 0.01, sizes
    assert sizes[0] < 2.5e6


def test_classes_without_val_samples_show_as_missing():
    from kddoctor.checks.base import jsonable
    from kddoctor.report.figures import build_figures

    torch.manual_seed(0)
    x, y = torch.randn(60, 8), torch.arange(60) % 3
    train = [(x[i : i + 20], y[i : i + 20]) for i in range(0, 60, 20)]
    val = [(x[y != 2], y[y != 2])]  # no val sample of class "c"
    d = diagnose(
        torch.nn.Linear(8, 3),
        torch.nn.Linear(8, 3),
        train,
        val,
        num_classes=3,
        class_names=list("abc"),
        checks=[],
    )
    pc = d.details["per_class"]["val"]
    assert pc["count"][2] == 0 and pc["agreement"][2] is None and pc["student_acc"][2] is None
    assert pc["agreement"][0] is not None
    row = re.search(r"<tr><td>c</td>(.*?)</tr>", render_html(d)).group(1)
    assert "%" not in row and row.count("–") == 3
    fig = build_figures(d.to_dict(), jsonable(d.details))["per_class"]
    assert all(trace["y"][2] is None for trace in fig["data"])


def test_the_console_header_says_what_a_split_counts():
    from kddoctor.report.words import split_size as _split_size

    lm = {"task": "causal-lm", "n": {"train": 258048}, "sequences": {"train": 4096}}
    assert _split_size(lm, "train") == "train 258,048 tokens (4,096 sequences)"
    assert _split_size({"task": "classification", "n": {"val": 360}}, "val") == "val 360 samples"
