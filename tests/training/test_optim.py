"""`amt.training.optim.adamw`: the one AdamW of every training step (trainer, batch-size probe,
`amt bench --train`, `amt debug`) is the fused kernel on CPU and updates as the reference AdamW."""

from __future__ import annotations

import torch

from amt.training.optim import adamw


def test_fused_cpu_adamw_equals_the_reference_update() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(7, 5), torch.randn(5)]
    fused_params = [torch.nn.Parameter(w.clone()) for w in weights]
    reference_params = [torch.nn.Parameter(w.clone()) for w in weights]
    fused = adamw(fused_params, 1e-2, torch.device("cpu"), betas=(0.9, 0.95))
    reference = torch.optim.AdamW(reference_params, lr=1e-2, betas=(0.9, 0.95), foreach=False)
    assert fused.defaults["fused"]
    for step in range(5):
        grads = [torch.randn_like(w) * (step + 1) for w in weights]
        for params, opt in ((fused_params, fused), (reference_params, reference)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(fused_params, reference_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
