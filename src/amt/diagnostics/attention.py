"""Attention maps drawn over the input image.

- backbone: CLS-to-patch attention of the last block (mean over heads), and attention rollout
  (Abnar & Zuidema 2020: per block A' = r I + (1 - r) mean_heads(A), rows renormalised, product
  over blocks; the CLS row over the patches). Every block's attention is recomputed from its
  input by forward pre-hooks (`DinoBackbone.attention_probs`), so rollout covers all blocks, not
  only the tap blocks the model returns.
- object queries: the last decoder layer's cross-attention of each object query over the
  multi-scale memory (`forward(batch, return_attention=True)`: aux `object_cross_attention`
  (B,H,Q,T) and `memory_shapes`), each level upsampled to the image and summed.

Maps are (B, h, w) or (B, Q, S, S) float tensors scaled to [0, 1] per map for display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw
from torch import nn

from amt.data.transforms import denormalize_images


def _unit_scale(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    lo = x.amin(dim=dims, keepdim=True)
    hi = x.amax(dim=dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def cls_to_patch(attn: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """attn (B, H, T, T) probabilities, the last T - 1 = h*w tokens patches -> (B, h, w) in [0, 1]."""
    h, w = grid
    m = attn[:, :, 0, -h * w :].mean(1).reshape(-1, h, w)
    return _unit_scale(m, (1, 2))


def attention_rollout(attns: list[torch.Tensor], grid: tuple[int, int], residual: float = 0.5) -> torch.Tensor:
    """Rollout over blocks in forward order: attns list of (B, H, T, T) -> (B, h, w) in [0, 1]."""
    h, w = grid
    result = None
    for attn in attns:
        a = attn.float().mean(1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = residual * eye + (1 - residual) * a
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    m = result[:, 0, -h * w :].reshape(-1, h, w)
    return _unit_scale(m, (1, 2))


def query_maps(cross: torch.Tensor, memory_shapes: list[tuple[int, int]], size: int) -> torch.Tensor:
    """cross (B, H, Q, T) last-layer cross-attention, T = sum of h*w over `memory_shapes` (token
    order) -> (B, Q, size, size) in [0, 1] per query."""
    a = cross.float().mean(1)  # (B, Q, T)
    b, q, _ = a.shape
    total = torch.zeros(b, q, size, size, dtype=a.dtype, device=a.device)
    start = 0
    for h, w in memory_shapes:
        level = a[..., start : start + h * w].reshape(b, q, h, w)
        total += F.interpolate(level, size=(size, size), mode="bilinear", align_corners=False)
        start += h * w
    if start != a.shape[-1]:
        raise ValueError(
            f"object_cross_attention has {a.shape[-1]} memory tokens, memory_shapes {memory_shapes} give {start}"
        )
    return _unit_scale(total, (2, 3))


@torch.no_grad()
def compute_attention(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """One forward with attention. Returns {"cls" (B,h,w), "rollout" (B,h,w), "queries"
    (B,Q,S,S) or None, "query_score" (B,Q) 1 - p(no object) or None, "images" (B,S,S,3) uint8}."""
    model.eval()
    backbone = getattr(model, "backbone", None)
    blocks = list(backbone.model.encoder.layer) if backbone is not None and hasattr(backbone, "model") else []
    captured: list[torch.Tensor] = []
    handles = [
        blk.register_forward_pre_hook(lambda m, args: captured.append(backbone.attention_probs(m, args[0])))
        for blk in blocks
    ]
    try:
        out = model(batch, return_attention=True)
    finally:
        for handle in handles:
            handle.remove()
    aux = out.get("aux", {})
    attns = captured or list(aux.get("backbone_attentions", []))
    if not attns:
        raise ValueError("compute_attention: the model exposes no backbone attention (return_attention=True gave none)")
    image = batch["image"]
    size = image.shape[-1]
    patch = getattr(getattr(model, "config", None), "patch_size", 14)
    grid = (image.shape[-2] // patch, image.shape[-1] // patch)
    result: dict[str, Any] = {
        "cls": cls_to_patch(attns[-1], grid),
        "rollout": attention_rollout(attns, grid),
        "queries": None,
        "query_score": None,
    }
    if "object_cross_attention" in aux:
        result["queries"] = query_maps(aux["object_cross_attention"], aux["memory_shapes"], size)
        result["query_score"] = 1 - out["obj_logits"].float().softmax(-1)[..., -1]
    rgb = image.float() if image.is_floating_point() else image.float() / 255.0
    if image.is_floating_point():
        rgb = denormalize_images(rgb)
    result["images"] = (rgb.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return result


def overlay_heatmap(
    image: np.ndarray, heat: np.ndarray | torch.Tensor, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """image (H, W, 3) uint8; heat (h, w) in [0, 1] (upsampled bilinearly) -> blended RGB image."""
    heat = np.asarray(heat.cpu() if isinstance(heat, torch.Tensor) else heat, dtype=np.float32)
    H, W = image.shape[:2]
    up = np.asarray(Image.fromarray(heat).resize((W, H), Image.BILINEAR), dtype=np.float32).clip(0, 1)
    colour = colormaps[cmap](up)[..., :3] * 255
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colour
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def _tile_row(tiles: list[tuple[str, Image.Image]]) -> Image.Image:
    w, h = tiles[0][1].size
    row = Image.new("RGB", (len(tiles) * (w + 4), h + 14), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    for k, (label, tile) in enumerate(tiles):
        row.paste(tile, (k * (w + 4), 14))
        draw.text((k * (w + 4) + 2, 1), label, fill=(0, 0, 0))
    return row


def save_attention_maps(
    model: nn.Module,
    batch: dict[str, Any],
    out_dir: str | Path,
    max_images: int = 4,
    top_queries: int = 3,
    min_px: int = 160,
) -> list[Path]:
    """Write `attention_<i>.png` per image (up to `max_images`): the input, last-block CLS
    attention, rollout, and the `top_queries` object queries with the highest object score.
    Tiles are upsampled to at least `min_px` pixels. Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    att = compute_attention(model, batch)
    paths = []
    for i in range(min(max_images, len(att["images"]))):
        img = att["images"][i]
        scale = max(1, -(-min_px // img.shape[0]))
        big = np.asarray(Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.BILINEAR))
        tiles = [("input", Image.fromarray(big)), ("CLS last block", overlay_heatmap(big, att["cls"][i]))]
        tiles.append(("rollout", overlay_heatmap(big, att["rollout"][i])))
        if att["queries"] is not None:
            scores = att["query_score"][i]
            for q in scores.argsort(descending=True)[:top_queries].tolist():
                tiles.append((f"query {q} p={float(scores[q]):.2f}", overlay_heatmap(big, att["queries"][i, q])))
        path = out / f"attention_{i}.png"
        _tile_row(tiles).save(path)
        paths.append(path)
    return paths
