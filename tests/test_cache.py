"""The teacher-output cache never serves logits of a different teacher: weights, SPEC or code."""

import torch

from kddoctor import diagnose
from kddoctor._cache import model_fingerprint
from kddoctor.models import build_model

TEACHER = """
import torch
def act(x):
    return {act}
class Net(torch.nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.fc = torch.nn.Linear(4, num_classes)
    def forward(self, x):
        return {forward}
def make(num_classes=3):
    torch.manual_seed(0)
    return Net(num_classes)
"""


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 4, generator=g)
    return [(x[i : i + 16], torch.arange(16) % 3) for i in range(0, 48, 16)]


def _run(tmp_path, act="x", forward="act(self.fc(x))", cache=True):
    f = tmp_path / "teacher.py"
    f.write_text(TEACHER.format(act=act, forward=forward))
    teacher = build_model(f"{f}:make", 3)
    torch.manual_seed(2)
    data = _data()
    return diagnose(
        teacher,
        torch.nn.Linear(4, 3),
        data,
        data,
        checks=[],
        teacher_cache=tmp_path / "cache" if cache else None,
        teacher_spec=f"{f}:make",
    )


def test_changed_teacher_code_with_the_same_weights_is_a_cache_miss(tmp_path):
    first = _run(tmp_path)
    again = _run(tmp_path)
    assert again.run["timings"]["teacher_cache"]["val"] == {"hits": 3, "misses": 0}
    for change in ({"act": "x * 3"}, {"forward": "-self.fc(x)"}):  # a helper in the file; forward itself
        changed = _run(tmp_path, **change)
        assert changed.run["timings"]["teacher_cache"]["val"]["hits"] == 0
        fresh = _run(tmp_path, **change, cache=False)
        assert changed.metrics["val"]["teacher"] == fresh.metrics["val"]["teacher"]
        assert changed.metrics["val"]["teacher"]["loss"] != first.metrics["val"]["teacher"]["loss"]


CLASS = """
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
    def forward(self, x):
        return {forward}
"""


def test_fingerprint_covers_class_code_without_a_source_file():
    models = []
    for forward in ("self.fc(x)", "self.fc(x) * 2"):
        ns = {"torch": torch}
        exec(CLASS.format(forward=forward), ns)  # no source file: the bytecode stands in for it
        torch.manual_seed(0)
        models.append(ns["Net"]())
    assert models[0].state_dict()["fc.weight"].equal(models[1].state_dict()["fc.weight"])
    a, b = (model_fingerprint(m, "module:make") for m in models)
    assert a != b and a == model_fingerprint(models[0], "module:make")
