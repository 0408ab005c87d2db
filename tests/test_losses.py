"""The KD term matches torch's own kl_div under each reduction."""

import pytest
import torch
import torch.nn.functional as F

from kddoctor.losses import kd_term


@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
def test_kd_term_matches_kl_div(reduction):
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    want = F.kl_div(F.log_softmax(s / 3, 1), F.softmax(t / 3, 1), reduction=reduction) * 9
    assert torch.allclose(kd_term(s, t, 3.0, reduction=reduction), want, atol=1e-6)


def test_mean_reduction_divides_by_classes_too():
    torch.manual_seed(1)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    assert torch.allclose(kd_term(s, t, 2.0, reduction="mean") * 5, kd_term(s, t, 2.0), atol=1e-6)
    assert torch.allclose(kd_term(s, t, 2.0, t2=False) * 4, kd_term(s, t, 2.0), atol=1e-6)
