"""The proposal head's per-token targets and loss (selected object queries), the supervision of
observable objects only, and old configs loading."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from amt.geometry.camera import project
from amt.models import AMT, build_model
from amt.testing import random_batch
from amt.training.losses.config import LossConfig
from amt.training.losses.loss import AMTLoss


def _outputs(model: AMT, batch: dict) -> dict:
    with torch.no_grad():
        return model(batch)


def test_proposal_loss_is_lowest_when_the_centre_cells_name_the_class() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", image_size=112, object_queries="selected").eval()
    batch = random_batch(3, image_size=112)
    out = _outputs(model, batch)
    aux = out["aux"]
    uv_tok, stride = aux["proposal_uv"], aux["proposal_stride"]
    # independent target: the cell index floor((u + 0.5) / s) on each level's own grid
    uv = project(batch["obj_t"], batch["K"])
    target = torch.zeros_like(aux["proposal_logits"])
    for b in range(3):
        for m in torch.nonzero(batch["obj_valid"][b]).flatten().tolist():
            cell = torch.floor((uv[b, m] + 0.5) / stride[:, None])  # (T, 2) cell of the centre per level
            own = torch.floor((uv_tok + 0.5) / stride[:, None])
            hit = (cell == own).all(-1) & (batch["obj_t"][b, m, 2] > 0)
            target[b, hit, int(batch["obj_class"][b, m]) - 1] = 1.0
    assert target.sum() > 0, "the random batch should put some object centres in the crop"
    loss = AMTLoss(LossConfig())
    perfect = dict(out, aux=dict(aux, proposal_logits=(target * 2 - 1) * 20))
    wrong = dict(out, aux=dict(aux, proposal_logits=(1 - target * 2) * 20))
    _, good_terms = loss(perfect, batch)
    _, bad_terms = loss(wrong, batch)
    assert good_terms["object_class/proposals"] < 1e-6
    assert bad_terms["object_class/proposals"] > 10.0


def test_proposal_loss_trains_the_proposal_head() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", image_size=112, object_queries="selected")
    batch = random_batch(2, image_size=112)
    total, terms = AMTLoss(LossConfig())(model(batch), batch)
    assert "object_class/proposals" in terms
    total.backward()
    assert model.decoder.proposal[-1].weight.grad.abs().sum() > 0


def test_objects_out_of_view_are_not_supervised() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", image_size=112).eval()
    batch = random_batch(2, image_size=112)
    batch["obj_valid"][:] = False
    batch["obj_valid"][:, :2] = True
    # slot 0 at the crop's centre ray, slot 1 far to the side (its centre ~3 crop widths out)
    z = torch.tensor([0.6, 0.6])
    centre = torch.stack([(batch["K"][:, 0, 2] - batch["K"][:, 0, 2]) * z, torch.zeros(2), z], dim=-1)
    batch["obj_t"][:, 0] = centre
    batch["obj_t"][:, 1] = centre + torch.tensor([3 * 112 * 0.6 / batch["K"][0, 0, 0].item(), 0.0, 0.0])
    out = _outputs(model, batch)
    loss = AMTLoss(LossConfig())
    _, terms = loss(out, batch)
    moved = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
    moved["obj_t"][:, 1, 2] += 0.3  # move the unseen object: nothing the loss sees changes
    moved["obj_class"][:, 1] = 1 + batch["obj_class"][:, 1] % 21
    _, terms_moved = loss(out, {**batch, **moved})
    for name in ("object_position", "object_rotation", "object_class", "contact"):
        torch.testing.assert_close(terms_moved[name], terms[name])
    # with object_margin=None every valid object is supervised, seen or not
    everything = AMTLoss(LossConfig(object_margin=None))
    _, all_terms = everything(out, batch)
    _, all_moved = everything(out, {**batch, **moved})
    assert not torch.allclose(all_terms["object_position"], all_moved["object_position"])


def test_a_saved_config_without_object_queries_loads_as_learned_queries(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", object_queries="learned").eval()
    folder = model.save_pretrained(tmp_path / "old")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    del config["object_queries"]  # as written before the option existed
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    loaded = AMT.from_pretrained(folder).eval()
    assert loaded.config.object_queries == "learned"
    batch = random_batch(1)
    torch.testing.assert_close(loaded(batch)["obj_t"], model(batch)["obj_t"])
