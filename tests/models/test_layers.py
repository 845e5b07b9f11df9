"""Building blocks checked against an independent computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from amt.models.layers import BilinearResize


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [((12, 12), (24, 24)), ((6, 6), (24, 24)), ((3, 3), (24, 24)), ((8, 8), (32, 32)), ((5, 7), (16, 9)),
     ((16, 16), (8, 8)), ((1, 1), (4, 4))],
)  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True])
def test_bilinear_resize_equals_interpolate_with_its_gradient(size_in, size_out, channels_last):
    torch.manual_seed(0)
    x = torch.randn(3, 5, *size_in, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    resize = BilinearResize(size_in, size_out).double()
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = resize(mine, as_matmuls=True)
    expected = F.interpolate(ref, size=size_out, mode="bilinear", align_corners=False)
    assert out.shape == expected.shape == (3, 5, *size_out)
    # 1e-6, not 1e-12: for ratios like 7 -> 9 PyTorch's kernel forms its weights in single precision
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    g = torch.randn_like(expected)
    out.backward(g)
    expected.backward(g)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=0, atol=1e-6)


def test_bilinear_resize_of_another_size_falls_back_to_interpolate():
    x = torch.randn(2, 4, 10, 10)
    out = BilinearResize((12, 12), (24, 24))(x, as_matmuls=True)
    torch.testing.assert_close(out, F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False))


def test_bilinear_resize_adds_nothing_to_the_state_dict():
    assert BilinearResize((6, 6), (24, 24)).state_dict() == {}


def test_bilinear_resize_under_torch_compile_is_matmuls_equal_to_eager(monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    resize = BilinearResize((6, 6), (24, 24))
    eager = resize(x)
    calls: list[int] = []
    original = F.interpolate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "interpolate", counting)
    compiled = torch.compile(resize, backend="eager")(x)
    assert calls == []  # the matmul form, not upsample_bilinear2d, is what the compiler sees
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)
