"""sigma reparameterisation (Zhai et al. 2023)."""

from __future__ import annotations

import torch
from torch import nn

from amt.models import AMT
from amt.models.sigma_reparam import GAIN_SCALE, SigmaReparamLinear, apply_sigma_reparam


def test_sigma_estimate_matches_spectral_norm_and_reparam_norm_equals_gamma() -> None:
    torch.manual_seed(0)
    layer = SigmaReparamLinear(64, 48).train()
    # a new weight with a trained-like decaying spectrum (sigma_2 / sigma_1 = 0.7); the estimate
    # must catch up with it through a few training forwards from a random u
    U, _ = torch.linalg.qr(torch.randn(48, 48))
    V, _ = torch.linalg.qr(torch.randn(64, 48))
    spectrum = 3.0 * 0.7 ** torch.arange(48, dtype=torch.float32)
    with torch.no_grad():
        layer.weight.copy_(U @ torch.diag(spectrum) @ V.T)
        layer.u.copy_(torch.nn.functional.normalize(torch.randn(48), dim=0))
        layer.gamma.fill_(2.5 / GAIN_SCALE)
    x = torch.randn(5, 64)
    for _ in range(8):
        layer(x)
    exact = torch.linalg.matrix_norm(layer.weight.detach(), 2)
    assert abs(layer.sigma().item() - exact.item()) / exact.item() < 0.01
    reparam_norm = torch.linalg.matrix_norm(layer.effective_weight().detach(), 2)
    assert abs(reparam_norm.item() - 2.5) / 2.5 < 0.01
    assert layer.gain().item() == 2.5


def test_wrapping_keeps_the_initial_function() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(32, 16)
    x = torch.randn(4, 32)
    expected = linear(x).detach()
    layer = SigmaReparamLinear.from_linear(linear)
    torch.testing.assert_close(layer.eval()(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.train()(x), expected, rtol=1e-3, atol=1e-4)


def test_power_iteration_runs_only_in_training() -> None:
    layer = SigmaReparamLinear(8, 8)
    u = layer.u.clone()
    with torch.no_grad():
        layer.weight.add_(torch.randn(8, 8))
    layer.eval()(torch.randn(2, 8))
    assert torch.equal(layer.u, u)
    layer.train()(torch.randn(2, 8))
    assert not torch.equal(layer.u, u)


def test_state_is_persistent_and_gamma_learns() -> None:
    layer = SigmaReparamLinear(8, 4)
    assert {"weight", "bias", "gamma", "u", "v"} <= set(layer.state_dict())
    layer(torch.randn(3, 8)).sum().backward()
    assert layer.gamma.grad is not None and layer.gamma.grad.abs() > 0


def test_applied_to_every_head_linear_not_norms(tiny_model: AMT) -> None:
    assert tiny_model.config.sigma_reparam
    plain = [n for n, m in tiny_model.named_modules() if type(m) is nn.Linear and not n.startswith("backbone.")]
    assert plain == [], f"head linear layers without sigma reparam: {plain}"
    wrapped = [n for n, m in tiny_model.named_modules() if isinstance(m, SigmaReparamLinear)]
    assert wrapped and not any(n.startswith("backbone.") for n in wrapped)
    assert any(isinstance(m, nn.LayerNorm) for m in tiny_model.decoder.modules())


def test_apply_counts_and_skips() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Sequential(nn.Linear(4, 2)))
    assert apply_sigma_reparam(net, skip=("2",)) == 1
    assert isinstance(net[0], SigmaReparamLinear) and type(net[2][0]) is nn.Linear


def test_traces_in_eval_mode() -> None:
    layer = SigmaReparamLinear(8, 4).eval()
    x = torch.randn(2, 8)
    traced = torch.jit.trace(layer, (x,))
    torch.testing.assert_close(traced(x), layer(x))


def test_folding_for_inference_keeps_the_eval_function(tiny_model: AMT) -> None:
    import copy

    from amt.models.sigma_reparam import fold_sigma_reparam

    folded = copy.deepcopy(tiny_model).eval()
    assert fold_sigma_reparam(folded) > 0
    assert not any(isinstance(m, SigmaReparamLinear) for m in folded.modules())
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[[700.0, 0, 112], [0, 700.0, 112], [0, 0, 1]]])
    batch = {"image": torch.randn(1, 3, 224, 224, generator=g), "K": K}
    with torch.no_grad():
        a, b = tiny_model(batch), folded(batch)
    for key in ("joints_3d", "obj_t", "obj_logits", "contact_prob"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
