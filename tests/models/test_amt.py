"""AMT assembly: the output contract, persistence, export, optimiser groups."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from amt.data.transforms import crop_intrinsics_for_box
from amt.data.ycb import NUM_CLASSES
from amt.models import AMT, OUTPUT_KEYS
from amt.models.amt import crop_camera_features

EXPECTED_SHAPES = {
    "joints_3d": (21, 3), "joints_3d_coarse": (21, 3), "joint_conf": (21,), "mano_shape": (10,),
    "obj_t": (10, 3), "obj_quat": (10, 4), "obj_logits": (10, NUM_CLASSES + 1),
    "contact_points": (10, 3), "contact_prob": (10,), "contact_force": (10, 3),
}  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 3])
def test_output_keys_shapes_and_units(tiny_model: AMT, make_batch, batch_size: int) -> None:
    with torch.no_grad():
        out = tiny_model(make_batch(batch_size))
    assert set(out) == set(OUTPUT_KEYS) | {"aux"}
    for key, shape in EXPECTED_SHAPES.items():
        assert out[key].shape == (batch_size, *shape), key
        assert torch.isfinite(out[key]).all(), key
    # metres in front of the camera at a hand-object working distance, not millimetres
    assert ((out["joints_3d"][..., 2] > 0.05) & (out["joints_3d"][..., 2] < 5.0)).all()
    assert ((out["obj_t"][..., 2] > 0.05) & (out["obj_t"][..., 2] < 5.0)).all()
    torch.testing.assert_close(out["obj_quat"].norm(dim=-1), torch.ones(batch_size, 10))
    for key in ("joint_conf", "contact_prob"):
        assert ((out[key] >= 0) & (out[key] <= 1)).all(), key
    aux = out["aux"]
    assert torch.equal(aux["joints_3d_coarse"], out["joints_3d_coarse"])
    assert len(aux["refine_steps"]) == tiny_model.config.refine_steps
    for step in aux["refine_steps"]:
        assert step["joints_3d"].shape == (batch_size, 21, 3)
        assert step["obj_t"].shape == (batch_size, 10, 3)
        assert step["obj_quat"].shape == (batch_size, 10, 4)
    assert torch.equal(aux["refine_steps"][-1]["joints_3d"], out["joints_3d"])
    assert aux["hand_points"].shape == (batch_size, 101, 3)


def _all_outputs(out: dict) -> torch.Tensor:
    """A scalar touching every prediction (final, coarse, every refinement step, the per-token
    proposals of selected object queries)."""
    total = sum(out[k].float().sum() for k in OUTPUT_KEYS)
    for step in out["aux"]["refine_steps"]:
        total = total + sum(v.sum() for v in step.values())
    if "proposal_logits" in out["aux"]:
        total = total + out["aux"]["proposal_logits"].sum()
    return total


def test_optimizer_step_keeps_frozen_weights_and_reaches_every_other(tiny_model: AMT, make_batch) -> None:
    model = copy.deepcopy(tiny_model).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("backbone.model.encoder.layer.0.") for n in frozen)
    assert any(n.startswith("backbone.model.embeddings.") for n in frozen)
    assert not any(n.startswith("backbone.model.encoder.layer.3.") for n in frozen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    _all_outputs(model(make_batch(2))).backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert no_grad == [], f"parameters without a gradient: {no_grad}"
    opt.step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"frozen parameter {name} changed"
            assert p.grad is None, name


def test_parameter_groups_partition_the_trainable_parameters(tiny_model: AMT) -> None:
    backbone = {id(p) for p in tiny_model.trainable_backbone_parameters()}
    head = {id(p) for p in tiny_model.head_parameters()}
    trainable = {id(p) for p in tiny_model.parameters() if p.requires_grad}
    assert backbone and head and not backbone & head and backbone | head == trainable


def test_every_head_responds_to_the_input_and_queries_differ(tiny_model: AMT, make_batch) -> None:
    with torch.no_grad():
        out = tiny_model(make_batch(2, seed=1))
    for key in OUTPUT_KEYS:
        assert not torch.allclose(out[key][0], out[key][1]), f"{key} ignores the image"
    for key in ("obj_t", "obj_quat", "obj_logits", "contact_points", "contact_prob", "contact_force"):
        assert out[key][0].std(dim=0).min() > 0 or out[key][0].std(dim=0).max() > 0, key
        assert not torch.allclose(out[key][0, 0], out[key][0, 1]), f"{key}: queries 0 and 1 agree"


def test_crop_camera_features_locate_the_box_in_the_camera_image() -> None:
    """The features are the box centre's viewing ray and log(focal / box side), computed here
    from the box in the full image, independently of the crop K they are read from."""
    f, cx, cy, size = 600.0, 320.0, 240.0, 96
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    boxes = [(100, 50, 200), (-40, 300, 96), (400, 10, 150)]
    crop_K = torch.from_numpy(np.stack([crop_intrinsics_for_box(K, box, size) for box in boxes]))
    got = crop_camera_features(crop_K, size).double()
    for (x0, y0, side), row in zip(boxes, got, strict=True):
        # the box spans pixels x0 .. x0 + side - 1, so its centre is at x0 + side / 2 - 0.5
        want = [(x0 + side / 2 - 0.5 - cx) / f, (y0 + side / 2 - 0.5 - cy) / f, np.log(f / side)]
        np.testing.assert_allclose(row.numpy(), want, rtol=1e-5, atol=1e-6)


def test_crop_camera_input_reaches_the_outputs(tiny_model: AMT, make_batch) -> None:
    """With `crop_camera_input` the same pixels under another crop K give other predictions."""
    model = _variant(tiny_model, crop_camera_input=True)
    batch = make_batch(1)
    moved = dict(batch, K=batch["K"].clone())
    moved["K"][:, :2, 2] += 40.0  # the same crop taken elsewhere in the camera image
    with torch.no_grad():
        a, b = model(batch), model(moved)
    assert not torch.allclose(a["obj_logits"], b["obj_logits"])  # not only through the lift


def test_attention_maps_on_request(tiny_model: AMT, make_batch) -> None:
    with torch.no_grad():
        out = tiny_model(make_batch(1), return_attention=True)
        plain = tiny_model(make_batch(1))
    aux = out["aux"]
    assert len(aux["backbone_attentions"]) == 4 and aux["backbone_attentions"][-1].shape == (1, 4, 257, 257)
    tokens = sum(h * w for h, w in aux["memory_shapes"])
    cross = aux["object_cross_attention"]
    assert cross.shape == (1, 4, 10, tokens)
    torch.testing.assert_close(cross.sum(-1), torch.ones(1, 4, 10))
    torch.testing.assert_close(out["joints_3d"], plain["joints_3d"])
    assert "backbone_attentions" not in plain["aux"]


def test_save_and_load_round_trip_is_exact(tiny_model: AMT, make_batch, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.yaml", "model.safetensors"}
    loaded = AMT.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == tiny_model.config
    batch = make_batch(2)
    with torch.no_grad():
        a, b = tiny_model(batch), loaded(batch)
    for key in OUTPUT_KEYS:
        assert torch.equal(a[key], b[key]), key


def test_loading_is_strict_and_names_the_problem(tiny_model: AMT, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        AMT.from_pretrained(tmp_path / "nowhere")
    folder = tiny_model.save_pretrained(tmp_path / "ckpt")
    state = load_file(str(folder / "model.safetensors"))
    key = "decoder.norm.weight"
    save_file({k: v for k, v in state.items() if k != key}, str(folder / "model.safetensors"))
    with pytest.raises(KeyError, match=key):
        AMT.from_pretrained(folder)
    save_file({**state, "extra.weight": torch.zeros(1)}, str(folder / "model.safetensors"))
    with pytest.raises(KeyError, match="extra.weight"):
        AMT.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        AMT.from_pretrained(folder)


@pytest.mark.parametrize(
    "fields",
    [{}, {"object_queries": "selected"}, {"hand_keypoints": "heatmap"}, {"crop_camera_input": True}],
    ids=["default", "selected-queries", "heatmap-keypoints", "crop-camera-input"],
)
def test_trace_and_onnx_export(tiny_model: AMT, make_batch, tmp_path: Path, fields: dict[str, object]) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    batch = make_batch(1)
    model = _variant(tiny_model, **fields) if fields else tiny_model
    wrapper = _TensorForward(model).eval()
    with torch.no_grad():
        expected = wrapper(batch["image"], batch["K"])
        traced = torch.jit.trace(wrapper, (batch["image"], batch["K"]), check_trace=False)
        for got, want in zip(traced(batch["image"], batch["K"]), expected, strict=True):
            torch.testing.assert_close(got, want)
        path = tmp_path / "amt.onnx"
        torch.onnx.export(
            wrapper, (batch["image"], batch["K"]), str(path), dynamo=False, opset_version=18,
            input_names=["image", "K"], output_names=list(OUTPUT_KEYS),
        )  # fmt: skip
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = session.run(None, {"image": batch["image"].numpy(), "K": batch["K"].numpy()})
    for key, got, want in zip(OUTPUT_KEYS, results, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-3, atol=1e-4, msg=key)


def _variant(model: AMT, **fields: object) -> AMT:
    torch.manual_seed(0)
    return AMT(dataclasses.replace(model.config, **fields), load_backbone_weights=False).eval()


class _TensorForward(torch.nn.Module):
    def __init__(self, model: AMT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.forward_tensors(image, K)


def test_geometric_outputs_stay_float32_under_bf16_autocast(tiny_model: AMT, make_batch) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model(make_batch(1))
    for key in OUTPUT_KEYS:
        assert out[key].dtype == torch.float32, key
