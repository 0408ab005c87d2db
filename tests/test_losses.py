"""The KD objective under each convention matches torch's own kl_div and the stated weights."""

import pytest
import torch
import torch.nn.functional as F

from kddoctor.losses import effective_weights, kd_loss, kd_term


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


def test_alpha_conventions_are_mirror_images():
    torch.manual_seed(2)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    a = kd_loss(s, t, y, alpha=0.8, alpha_on="kd")
    b = kd_loss(s, t, y, alpha=0.2, alpha_on="ce")
    assert torch.allclose(a, b)


def test_effective_weights():
    w = effective_weights(0.9, "kd", 4.0, False, "mean", 10, 64)
    assert w["kd_effective"] == pytest.approx(0.9 / 16 / 10) and w["ce"] == pytest.approx(0.1)
    assert effective_weights(0.7, "kd", 4.0, True, "batchmean", 10, 64)["kd_share"] == pytest.approx(0.7)
