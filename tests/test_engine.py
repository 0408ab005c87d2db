"""The evaluation pass reads logits out of what real models return."""

import copy

import pytest
import torch
from torch import nn

from kddoctor import diagnose
from kddoctor.engine import as_logits
from kddoctor.errors import UserError


class FeaturesAndLogits(nn.Module):
    """Returns (features [B, 32], logits [B, 3]), as many distillation codebases do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        f = self.body(x)
        return f, self.fc(f)


def test_as_logits_picks_the_tensor_with_num_classes_columns():
    f, logits = torch.zeros(2, 32), torch.ones(2, 3)
    assert as_logits((f, logits), num_classes=3) is logits
    assert as_logits([logits, f], num_classes=3) is logits
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert as_logits((a, b)) is a  # same shapes: the first, as before
    with pytest.raises(UserError, match=r"\[2, 32\].*\[2, 3\].*\.logits"):
        as_logits((f, logits))


def test_features_and_logits_model_is_diagnosed_on_its_logits():
    torch.manual_seed(0)
    x = torch.randn(96, 4)
    y = torch.arange(96) % 3
    data = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]
    teacher = FeaturesAndLogits().eval()
    student = copy.deepcopy(teacher)
    checks = ["mode_parity", "capacity_probe"]
    d = diagnose(teacher, student, data, data, num_classes=3, quick=True, checks=checks)
    assert d.metrics["val"]["agreement"] == 1.0 and d.run["num_classes"] == 3
    assert {f.id: f.status.value for f in d.checks}.keys() == {"mode_parity", "capacity_probe"}
    assert all(f.status.value != "error" for f in d.checks), [f.summary for f in d.checks]
