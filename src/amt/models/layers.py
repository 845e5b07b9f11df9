"""Small building blocks shared by the heads: attention with optional probability maps, MLP,
bilinear resizing as matmuls, sine positional encodings and the head weight initialisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from amt.errors import ConfigError


class Attention(nn.Module):
    """Multi-head attention on SDPA with separate q / k / v / out projections (so each is an
    `nn.Linear` that sigma reparameterisation can wrap).

    forward(q (B,Lq,D), k (B,Lk,D), v (B,Lk,D), return_probs) -> (out (B,Lq,D), probs (B,H,Lq,Lk) or None)
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model config: hidden_dim={dim} is not divisible by num_heads={heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_probs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        split = lambda x: x.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        qh, kh, vh = split(self.q(q)), split(self.k(k)), split(self.v(v))
        probs = None
        if return_probs:
            probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
            x = probs @ vh
        else:
            x = F.scaled_dot_product_attention(qh, kh, vh)
        return self.out(x.transpose(1, 2).flatten(-2)), probs


class MLP(nn.Sequential):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int) -> None:
        super().__init__(nn.Linear(dim_in, dim_hidden), nn.GELU(), nn.Linear(dim_hidden, dim_out))


def bilinear_resize_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) float32 weights A such that A @ x resizes an axis of n_in samples to n_out
    the way F.interpolate(mode="bilinear", align_corners=False, antialias=False) does: source
    coordinate (i + 0.5) * n_in / n_out - 0.5, clamped at 0, split between its two neighbours."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=n_in - 1)
    frac = src - lo
    rows = torch.arange(n_out)
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    a.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    a.index_put_((rows, (lo + 1).clamp(max=n_in - 1)), frac, accumulate=True)
    return a.float()


class BilinearResize(nn.Module):
    """(B, C, h, w) -> (B, C, H, W), bilinear without corner alignment. Eager runs call
    F.interpolate; under torch.compile it is two matmuls on the channels-last layout (the same
    numbers to ~1e-6), because inductor lowers upsample_bilinear2d's backward to a scatter-add
    that ran ~10x slower on CPU, while eager the native kernel was the faster one
    (docs/experiments.md "Speed choices"). `as_matmuls=True` forces the matmul form.
    """

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
        super().__init__()
        self.size_in, self.size_out = tuple(size_in), tuple(size_out)
        self.register_buffer("rows", bilinear_resize_matrix(size_out[0], size_in[0]), persistent=False)
        self.register_buffer("cols", bilinear_resize_matrix(size_out[1], size_in[1]), persistent=False)

    def forward(self, x: torch.Tensor, as_matmuls: bool = False) -> torch.Tensor:
        matmuls = as_matmuls or torch.compiler.is_compiling()
        if not matmuls or tuple(x.shape[-2:]) != self.size_in:
            return F.interpolate(x, size=self.size_out, mode="bilinear", align_corners=False)
        # -1 for the batch so that traced exports keep a dynamic batch; the other sizes are fixed
        (_, c, h, w), (H, W) = x.shape, self.size_out
        x = x.permute(0, 2, 3, 1).reshape(-1, h, w * c)  # a view when x is channels-last
        x = torch.matmul(self.rows.to(x.dtype), x).reshape(-1, w, c)
        x = torch.matmul(self.cols.to(x.dtype), x)
        return x.reshape(-1, H, W, c).permute(0, 3, 1, 2)  # channels-last (B, C, H, W)


def sine_positions_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sine/cosine encoding of an h x w grid -> (h*w, dim), row-major like the tokens."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    # coordinates normalised to [0, 1] over the image so levels of different sizes agree
    xy = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], dim=-1)
    return sine_encode_points(xy, dim, temperature)


def sine_encode_points(xy: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(..., 2) points (x, y) in image fractions ([0, 1] over the image) -> (..., dim) sine/cosine
    encoding, the one `sine_positions_2d` gives a grid: a query placed at a token's centre gets
    that token's positional encoding."""
    if dim % 4:
        raise ValueError(f"positional encoding dim {dim} must be divisible by 4")
    freq = temperature ** (-torch.arange(dim // 4, dtype=torch.float32, device=xy.device) / (dim // 4))
    ang_x = 2 * math.pi * xy[..., :1].float() * freq * 10
    ang_y = 2 * math.pi * xy[..., 1:].float() * freq * 10
    return torch.cat([ang_x.sin(), ang_x.cos(), ang_y.sin(), ang_y.cos()], dim=-1)


@torch.no_grad()
def init_head_weights(module: nn.Module) -> None:
    """Fan-in scaled truncated-normal linear weights (std 1/sqrt(fan_in): each layer keeps the
    scale of its input, whatever the width), zero biases, unit norms: heads only, never the
    backbone. A fixed small std (ViT's 0.02) shrinks the signal by 0.02 * sqrt(fan_in) per layer,
    about 6x at the tiny preset's width 64, so the outputs barely depend on the image."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=m.in_features**-0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def grid_centres(h: int, w: int, stride: float) -> torch.Tensor:
    """(h*w, 2) crop-pixel centres (u, v) of an h x w feature map with `stride` pixels per cell,
    row-major like the tokens: cell j spans pixels j s .. j s + s - 1 (amt.models.refine)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1) * stride + (stride - 1) / 2
