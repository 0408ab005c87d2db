"""Plotly figure specs (plain dicts) from aggregated results: the gap picture, reliability diagrams,
per-class agreement, membership histograms, the alpha/T curves and the fit-probe curve."""

from __future__ import annotations

TEACHER, STUDENT = "#4C78A8", "#F58518"
BASE_LAYOUT = {
    "margin": {"l": 50, "r": 10, "t": 36, "b": 40},
    "height": 320,
    "paper_bgcolor": "rgba(0,0,0,0)",
    "plot_bgcolor": "rgba(0,0,0,0)",
    "legend": {"orientation": "h", "y": -0.2},
    "font": {"size": 12},
}


def _layout(title: str, **kw) -> dict:
    return {**BASE_LAYOUT, "title": {"text": title, "font": {"size": 14}}, **kw}


def _bar(name: str, y: list, color: str, axis: int, **kw) -> dict:
    suffix = "" if axis == 1 else str(axis)
    return {
        "type": "bar",
        "name": name,
        "x": ["train", "val"],
        "y": y,
        "marker": {"color": color},
        "xaxis": f"x{suffix}",
        "yaxis": f"y{suffix}",
        **kw,
    }


def gap_figure(m: dict) -> dict:
    splits = ["train", "val"]
    data = []
    for model, color in (("teacher", TEACHER), ("student", STUDENT)):
        data.append(_bar(f"{model} loss", [m[s][model]["loss"] for s in splits], color, 1))
        data.append(_bar(f"{model} acc", [m[s][model]["acc"] for s in splits], color, 2, showlegend=False))
    data.append(_bar("agreement", [m[s]["agreement"] for s in splits], "#54A24B", 3))
    data.append(_bar("KL(t‖s)", [m[s]["kl"] for s in splits], "#B279A2", 4))
    layout = _layout(
        "Train vs val: loss, accuracy, agreement, KL",
        barmode="group",
        grid={"rows": 1, "columns": 4, "pattern": "independent"},
        annotations=[
            {
                "text": t,
                "xref": f"x{i} domain" if i > 1 else "x domain",
                "yref": f"y{i} domain" if i > 1 else "y domain",
                "x": 0.5,
                "y": 1.08,
                "showarrow": False,
                "font": {"size": 11},
            }
            for i, t in enumerate(["loss", "accuracy", "agreement", "KL"], start=1)
        ],
    )
    return {"data": data, "layout": layout}


def reliability_figure(rel: dict, split: str) -> dict:
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "x": [0, 1],
            "y": [0, 1],
            "name": "perfect",
            "line": {"dash": "dot", "color": "#888"},
        }
    ]
    for model, color in (("teacher", TEACHER), ("student", STUDENT)):
        r = rel.get(f"{model}_{split}")
        if not r:
            continue
        pts = [(c, a, n) for c, a, n in zip(r["conf"], r["acc"], r["count"], strict=True) if n > 0]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": model,
                "x": [p[0] for p in pts],
                "y": [p[1] for p in pts],
                "text": [f"n={int(p[2])}" for p in pts],
                "line": {"color": color},
            }
        )
    return {
        "data": data,
        "layout": _layout(
            f"Reliability ({split})",
            xaxis={"title": "confidence", "range": [0, 1]},
            yaxis={"title": "accuracy", "range": [0, 1.02]},
        ),
    }


def confidence_figure(rel: dict, split: str, bins: int) -> dict:
    edges = [(i + 0.5) / bins for i in range(bins)]
    data = [
        {
            "type": "bar",
            "name": model,
            "x": edges,
            "y": rel[f"{model}_{split}"]["count"],
            "marker": {"color": color},
            "opacity": 0.75,
        }
        for model, color in (("teacher", TEACHER), ("student", STUDENT))
        if f"{model}_{split}" in rel
    ]
    return {
        "data": data,
        "layout": _layout(
            f"Confidence histogram ({split})",
            barmode="overlay",
            xaxis={"title": "max probability"},
            yaxis={"title": "samples"},
        ),
    }


def per_class_figure(per_class: dict, names: list[str]) -> dict:
    val = per_class["val"]
    x = names[: len(val["agreement"])] or [str(i) for i in range(len(val["agreement"]))]
    data = [
        {
            "type": "bar",
            "name": "agreement (val)",
            "x": x,
            "y": val["agreement"],
            "marker": {"color": "#54A24B"},
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "teacher acc",
            "x": x,
            "y": val["teacher_acc"],
            "marker": {"color": TEACHER},
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "student acc",
            "x": x,
            "y": val["student_acc"],
            "marker": {"color": STUDENT, "symbol": "diamond"},
        },
    ]
    return {
        "data": data,
        "layout": _layout(
            "Per-class agreement (val)", yaxis={"range": [0, 1.02]}, xaxis={"type": "category"}
        ),
    }


def membership_figure(gap_details: dict) -> dict:
    edges = gap_details["loss_bins"]
    mids = [max(1e-4, (a * b) ** 0.5) if a > 0 else b / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    data = []
    for key, color, dash in (
        ("student_train", STUDENT, "solid"),
        ("student_val", STUDENT, "dot"),
        ("teacher_train", TEACHER, "solid"),
        ("teacher_val", TEACHER, "dot"),
    ):
        counts = gap_details["loss_hist"][key]
        total = max(sum(counts), 1)
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": key.replace("_", " "),
                "x": mids,
                "y": [c / total for c in counts],
                "line": {"color": color, "dash": dash},
            }
        )
    return {
        "data": data,
        "layout": _layout(
            "Per-sample loss: train vs val (membership)",
            xaxis={"type": "log", "title": "cross-entropy"},
            yaxis={"title": "fraction of samples"},
        ),
    }


def sweep_figure(alpha_details: dict) -> dict:
    a = alpha_details["alpha_curve"]
    t = alpha_details["temperature_curve"]
    axis = alpha_details.get("axis", "alpha on KD")  # the weight as the user names it
    x_of = lambda r: r.get("axis", r["alpha"])  # noqa: E731  (older results: the textbook alpha)
    t_name = alpha_details.get("temperature_axis", "T")
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": f"agreement vs {axis.split(' ')[0]} ({t_name}={a[0]['temperature']:g})",
            "x": [x_of(r) for r in a],
            "text": [r.get("user", "") for r in a],
            "y": [r["agreement"] for r in a],
            "xaxis": "x",
            "yaxis": "y",
            "line": {"color": "#54A24B"},
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": f"val loss vs {axis.split(' ')[0]}",
            "x": [x_of(r) for r in a],
            "y": [r["loss"] for r in a],
            "xaxis": "x",
            "yaxis": "y3",
            "line": {"color": STUDENT, "dash": "dot"},
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": f"agreement vs {t_name} ({t[0].get('user', '')})",
            "x": [r["temperature"] for r in t],
            "text": [r.get("user", "") for r in t],
            "y": [r["agreement"] for r in t],
            "xaxis": "x2",
            "yaxis": "y2",
            "line": {"color": TEACHER},
        },
    ]
    words = "in your convention" if a and a[0].get("user") else "(per-token textbook objective)"
    layout = _layout(
        f"Fine-tuning sweeps {words}: val agreement (and loss) by loss weight and temperature",
        xaxis={"title": axis, "domain": [0, 0.45]},
        yaxis={"title": "val agreement"},
        yaxis3={"overlaying": "y", "side": "right", "title": "val loss", "showgrid": False},
        xaxis2={"title": t_name, "type": "log", "domain": [0.58, 1], "anchor": "y2"},
        yaxis2={"anchor": "x2"},
    )
    return {"data": data, "layout": layout}


def fit_figure(curve: list, target: float) -> dict:
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "train-subset agreement",
                "x": [c[0] for c in curve],
                "y": [c[1] for c in curve],
                "line": {"color": STUDENT},
            },
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"target {target:.0%}",
                "x": [curve[0][0], curve[-1][0]] if curve else [],
                "y": [target, target],
                "line": {"dash": "dot", "color": "#888"},
            },
        ],
        "layout": _layout(
            "Capacity fit probe (pure KD)", xaxis={"title": "step"}, yaxis={"title": "agreement"}
        ),
    }


def position_figure(lm: dict) -> dict:
    """Causal LMs: teacher-student top-1 agreement by position in the sequence, train and val."""
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": f"{split} agreement",
            "x": list(range(1, len(v["agreement_by_position"]) + 1)),
            "y": v["agreement_by_position"],
            "connectgaps": False,
            "line": {"color": color},
        }
        for split, color in (("train", TEACHER), ("val", STUDENT))
        if (v := lm.get(split))
    ]
    layout = _layout(
        "Agreement by position (the token each position predicts)",
        xaxis={"title": "position in the sequence"},
        yaxis={"title": "top-1 agreement", "range": [0, 1]},
    )
    return {"data": data, "layout": layout}


def build_figures(doc: dict, details: dict) -> dict[str, dict]:
    """Every figure the page can show, keyed by where it goes; a missing check just drops its figure."""
    checks = details.get("checks", {})
    evidence = {c["id"]: c["evidence"] for c in doc["checks"]}
    figs = {"gap": gap_figure(doc["metrics"])}
    if details.get("lm"):
        figs["positions"] = position_figure(details["lm"])
    cal = checks.get("calibration")
    if cal:
        figs["reliability_val"] = reliability_figure(cal["reliability"], "val")
        figs["reliability_train"] = reliability_figure(cal["reliability"], "train")
        figs["confidence_val"] = confidence_figure(cal["reliability"], "val", cal["bins"])
    if details.get("per_class", {}).get("val"):
        figs["per_class"] = per_class_figure(details["per_class"], doc["run"].get("class_names") or [])
    if checks.get("generalization_gap"):
        figs["membership"] = membership_figure(checks["generalization_gap"])
    sweep = checks.get("alpha_sensitivity")
    if sweep:
        figs["sweep"] = sweep_figure(sweep)
    cap = evidence.get("capacity_probe") or {}
    if cap.get("fit_curve"):
        figs["fit"] = fit_figure(cap["fit_curve"], cap.get("fit_target", 0.99))
    return figs
