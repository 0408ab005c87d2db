"""Are train-time and inference-time inputs the same kind of thing, and what each model expects?"""

from __future__ import annotations

import math

import numpy as np

from .base import Finding, Status, grade, register_check, worst

SMD_WARN, SMD_FAIL = 0.2, 0.5  # standardized mean difference (Cohen's d): small / medium effect
LOG_STD_WARN, LOG_STD_FAIL = math.log(1.25), math.log(2.0)
RANGE_IOU_WARN = 0.5  # observed vs expected normalized value range


def compare_inputs(a: dict, b: dict) -> dict:
    """Per-channel standardized mean difference, log std ratio and range overlap between two splits."""
    ma, mb = np.array(a["mean"]), np.array(b["mean"])
    sa, sb = np.array(a["std"]), np.array(b["std"])
    if ma.shape != mb.shape:
        return {"channels_differ": True, "max_smd": float("inf"), "max_log_std_ratio": float("inf")}
    pooled = np.sqrt((sa**2 + sb**2) / 2) + 1e-12
    smd = np.abs(ma - mb) / pooled
    log_ratio = np.abs(np.log((sb + 1e-12) / (sa + 1e-12)))
    return {
        "smd": smd.tolist(),
        "log_std_ratio": log_ratio.tolist(),
        "max_smd": float(smd.max()),
        "max_log_std_ratio": float(log_ratio.max()),
        "worst_channel": int(np.argmax(np.maximum(smd / SMD_FAIL, log_ratio / LOG_STD_FAIL))),
    }


def normalization_fix(train: dict, val: dict) -> dict:
    """The Normalize(mean, std) that maps the val inputs onto the train inputs' statistics, measured:
    x' = (x - a) / b has train's mean and std when b = s_val / s_train and a = m_val - m_train * b."""
    mt, st, mv, sv = (np.array(d[k], dtype=float) for d in (train, val) for k in ("mean", "std"))
    scale = sv / np.maximum(st, 1e-12)
    return {
        "split": "val",
        "mean": (mv - mt * scale).round(4).tolist(),
        "std": scale.round(4).tolist(),
        "train_mean": mt.round(4).tolist(),
        "train_std": st.round(4).tolist(),
        "val_mean": mv.round(4).tolist(),
        "val_std": sv.round(4).tolist(),
    }


def expected_normalization(model) -> dict | None:
    """timm data config of a model (mean, std, input size...), or None for models without one."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not cfg or "mean" not in cfg:
        return None
    from timm.data import resolve_data_config

    dc = resolve_data_config({}, model=model)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dc.items()}


def range_iou(observed: tuple[float, float], expected: tuple[float, float]) -> float:
    lo, hi = max(observed[0], expected[0]), min(observed[1], expected[1])
    union = max(observed[1], expected[1]) - min(observed[0], expected[0])
    return max(0.0, hi - lo) / union if union > 0 else 1.0


def _expectations(ev, val_inputs: dict) -> tuple[dict, list[str], Status]:
    """Inputs vs the normalization each model declares (timm data config)."""
    out, notes, status = {}, [], Status.PASS
    cfgs = {role: expected_normalization(getattr(ev, role)) for role in ("teacher", "student")}
    # --data-dir: the inputs are [0, 1] and each model normalizes its own (image_folder.NormalizedInput)
    own = {role: hasattr(getattr(ev, role), "kddoctor_normalization") for role in cfgs}
    n_ch = len(val_inputs.get("mean", []))
    shape = val_inputs.get("shapes", [[]])[0]
    for role, cfg in cfgs.items():
        if cfg is None:
            continue
        mean, std = cfg["mean"], cfg["std"]
        if len(mean) == n_ch and not own[role]:
            ious = [
                range_iou(
                    (val_inputs["min"][c], val_inputs["max"][c]),
                    ((0 - mean[c]) / std[c], (1 - mean[c]) / std[c]),
                )
                for c in range(n_ch)
            ]
            out[f"{role}_range_iou"] = min(ious)
            if min(ious) < RANGE_IOU_WARN:
                status = worst(status, Status.WARN)
                notes.append(
                    f"val inputs span [{min(val_inputs['min']):.2f}, {max(val_inputs['max']):.2f}] "
                    f"but the {role} expects mean={mean} std={std} "
                    f"(range IoU {min(ious):.2f})"
                )
        size = cfg.get("input_size")
        if size and len(shape) == 3 and list(shape[1:]) != list(size[1:]):
            out[f"{role}_size_mismatch"] = 1.0
            status = worst(status, Status.WARN)
            notes.append(f"inputs are {shape[1]}x{shape[2]} but the {role}'s config says {size[1]}x{size[2]}")
    if cfgs["teacher"] and cfgs["student"] and not all(own.values()):
        t, s = cfgs["teacher"], cfgs["student"]
        if not (np.allclose(t["mean"], s["mean"], atol=1e-3) and np.allclose(t["std"], s["std"], atol=1e-3)):
            out["norm_conflict"] = 1.0
            status = worst(status, Status.FAIL)  # one of the two models is certainly fed the wrong inputs
            notes.append(
                f"teacher expects mean={t['mean']} std={t['std']} but student mean={s['mean']} "
                f"std={s['std']}: one input tensor cannot suit both"
            )
    out["data_config"] = {k: v for k, v in cfgs.items() if v is not None}
    return out, notes, status


@register_check(
    "preprocessing_parity",
    needs=("train", "val"),
    title="Preprocessing parity",
    order=10,
    min_samples={"train": 2, "val": 2},
)
def preprocessing_parity(
    ev,
    *,
    smd_warn: float = SMD_WARN,
    smd_fail: float = SMD_FAIL,
    log_std_warn: float = LOG_STD_WARN,
    log_std_fail: float = LOG_STD_FAIL,
) -> Finding:
    """Train vs val input statistics per channel, and the normalization each model expects.

    smd_*: standardized mean difference (Cohen's d) between train and val inputs on any channel;
    log_std_*: |log| of their std ratio."""
    splits = {k: ev.splits[k].inputs for k in ("train", "train_eval", "val") if k in ev.splits}
    evidence: dict = {"inputs": splits, "shape_mismatch": 0.0, "norm_conflict": 0.0}
    levels = (smd_warn, smd_fail, log_std_warn, log_std_fail)
    status, notes = _compare_splits(splits, evidence, levels)
    exp, exp_notes, exp_status = _expectations(ev, splits["val"])
    evidence.update(exp)
    evidence["norm_range_mismatch"] = 1 - min([v for k, v in exp.items() if k.endswith("range_iou")] or [1.0])
    notes += exp_notes
    status = worst(status, exp_status)
    nonfinite = sum(s.get("nonfinite", 0) for s in splits.values())
    excluded = sum(ev.splits[k].metrics["excluded_nonfinite"] for k in ev.splits)
    evidence.update(nonfinite_inputs=nonfinite, excluded_nonfinite_logits=excluded)
    if nonfinite or excluded:
        status = worst(status, Status.WARN)
        notes.append(
            f"{nonfinite} non-finite input values; {excluded} samples with non-finite logits "
            "excluded from every metric"
        )
    n = ", ".join(f"{ev.splits[k].n} {k}" for k in splits)
    if not notes:
        summary = (
            f"train and val inputs match over {n} samples (largest mean shift {evidence['max_smd']:.2f} "
            f"std, std ratio {evidence['max_std_ratio']:.2f}x)"
        )
    else:
        summary = f"over {n} samples: " + "; ".join(notes[:3])
    return Finding("preprocessing_parity", status, summary, evidence)


def _compare_splits(splits: dict, evidence: dict, levels: tuple) -> tuple[Status, list[str]]:
    """Each train side against val: shapes, per-channel shift and spread, dtypes; the Normalize that
    would map val onto the train side when they differ (filled into `evidence`)."""
    smd_warn, smd_fail, lsr_warn, lsr_fail = levels
    val, status, notes = splits["val"], Status.PASS, []
    max_smd = max_lsr = 0.0
    for ref in ("train", "train_eval"):
        if ref not in splits:
            continue
        cmp = compare_inputs(splits[ref], val)
        evidence[f"{ref}_vs_val"] = cmp
        if cmp.get("channels_differ") or splits[ref]["shapes"] != val["shapes"]:
            status, evidence["shape_mismatch"] = Status.FAIL, 1.0
            notes.append(f"{ref} inputs have shape {splits[ref]['shapes']} but val {val['shapes']}")
            continue
        max_smd, max_lsr = max(max_smd, cmp["max_smd"]), max(max_lsr, cmp["max_log_std_ratio"])
        shift = worst(
            grade(cmp["max_smd"], smd_warn, smd_fail, what="the train-val mean shift"),
            grade(cmp["max_log_std_ratio"], lsr_warn, lsr_fail, what="the train-val spread ratio"),
        )
        if shift is not Status.PASS:
            c = cmp["worst_channel"]
            evidence["normalization_fix"] = normalization_fix(splits[ref], val)
            notes.append(
                f"channel {c}: {ref} mean {splits[ref]['mean'][c]:.3f} std {splits[ref]['std'][c]:.3f} "
                f"vs val mean {val['mean'][c]:.3f} std {val['std'][c]:.3f} "
                f"(shift {cmp['smd'][c]:.2f} std, std ratio {math.exp(cmp['log_std_ratio'][c]):.2f}x)"
            )
        status = worst(status, shift)
        if splits[ref]["dtypes"] != val["dtypes"]:
            status = worst(status, Status.WARN)
            notes.append(f"{ref} inputs are {splits[ref]['dtypes']} but val {val['dtypes']}")
    evidence.update(max_smd=max_smd, max_log_std_ratio=max_lsr, max_std_ratio=math.exp(max_lsr))
    return status, notes
