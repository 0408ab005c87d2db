"""The self-contained HTML report: jinja2 (autoescape) + plotly.js inlined once, gzip-compressed.

Only aggregated data reaches the page (bins, per-class counts, curves), never per-sample arrays,
so its size does not grow with the data set.
"""

from __future__ import annotations

import base64
import gzip
import json
from functools import cache

import jinja2
from markupsafe import Markup

from .figures import build_figures
from .words import split_sizes

CDN = "https://cdn.plot.ly/plotly-{version}.min.js"


@cache
def plotly_gz_b64() -> tuple[str, str]:
    """(version, base64 of gzip(plotly.min.js)); computed once per process, deterministic bytes."""
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    blob = gzip.compress(get_plotlyjs().encode(), compresslevel=9, mtime=0)
    return get_plotlyjs_version(), base64.b64encode(blob).decode("ascii")


def script_json(obj: object) -> str:
    """JSON safe to place inside a <script> element: no '<', '>' or '&' survive literally."""
    text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("kddoctor", "report"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{v:.1%}"
    env.filters["num"] = lambda v, d=3: (
        "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    )
    env.filters["script_json"] = script_json
    env.filters["ci"] = lambda v: Markup(
        "" if not v else f' <span class="small muted">[{v[0] * 100:.1f}, {v[1] * 100:.1f}]</span>'
    )
    return env


def render_html(diag, cdn: bool = False) -> str:
    """Render a Diagnosis into one self-contained HTML page."""
    from ..checks.base import jsonable

    doc = diag.to_dict()
    details = jsonable(diag.details)
    figures = build_figures(doc, details)
    version, blob = plotly_gz_b64()
    findings = {c["id"]: c for c in doc["checks"]}
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            doc=doc,
            run=doc["run"],
            sizes=split_sizes(doc["run"]),
            metrics=doc["metrics"],
            causes=doc["causes"],
            checks=doc["checks"],
            findings=findings,
            gate=doc.get("gate") or {},
            details=details,
            figures=figures,
            plotly_b64=None if cdn else blob,
            plotly_cdn=CDN.format(version=version) if cdn else None,
            class_names=doc["run"].get("class_names")
            or [str(i) for i in range(doc["run"].get("num_classes") or 0)],
        )
    )
