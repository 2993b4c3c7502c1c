"""A card's operating point (decision threshold): applied on every path that takes labels,
kept by derived and fine-tuned versions, chosen on validation by ``operating_point.choose``."""
import numpy as np
import pytest
import torch

from napari_ctseg.errors import ModelError, TrainingError
from napari_ctseg.segmentation.inference import fuse_for_inference
from napari_ctseg.models import registry
from napari_ctseg.models.definition import logit_bias
from napari_ctseg.models.predict import predict_image8, predict_volume
from napari_ctseg.models.preprocess import image8_to_input, probs_to_grid
from napari_ctseg.models.registry import ModelCard, ModelRegistry, derive_version, write_version
from napari_ctseg.models.unet import build_model
from napari_ctseg.training.operating_point import SweepRow, choose

ARCH = {"name": "unet2d", "in_channels": 1, "n_classes": 2, "base": 4, "depth": 2}
PREP = {"window": [-1100, 250], "context": 0, "size": [32, 32], "crop": "none"}


def _version(root, image, threshold=None):
    torch.manual_seed(3)
    model = build_model(ARCH).eval()
    x, _ = image8_to_input(image, PREP)
    with torch.no_grad():  # scale and centre the head: foreground probabilities spread over (0, 1)
        d = model(x)[0, 1] - model(x)[0, 0]
        model.head.weight.mul_(3.0 / float(d.std()))
        model.head.bias.mul_(3.0 / float(d.std()))
        d = model(x)[0, 1] - model(x)[0, 0]
        model.head.bias[1] -= float(d.median())
    card = ModelCard(target="infection", version="v1", labels={"infection": 1}, architecture=dict(ARCH),
                     preprocessing=dict(PREP), inputs=["hu", "image8"],
                     decision={"threshold": threshold} if threshold else {})
    write_version(root / "infection" / "v1", model.state_dict(), card)
    return model


def _foreground_probability(model, image):
    x, crop = image8_to_input(image, PREP)
    with torch.inference_mode():
        probs = torch.softmax(model(x).float(), dim=1)
    return probs_to_grid(probs, crop)[0, 1].numpy()


def test_threshold_labels_what_is_above_it(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "bundled_weights_dir", lambda: tmp_path / "none")
    rng = np.random.default_rng(0)
    image = (rng.random((32, 32)) * 255).astype(np.uint8)  # the network's size: no resampling
    raw = _version(tmp_path, image)
    p1 = _foreground_probability(raw.eval(), image)
    assert 0.05 < np.quantile(p1, 0.2) and np.quantile(p1, 0.8) < 0.95  # a spread to threshold
    reg = ModelRegistry([tmp_path], user_dir=tmp_path / "user")
    model, card = reg.load_model("infection", "v1")
    assert model.ctseg_logit_bias is None
    at_half = np.abs(p1 - 0.5) > 1e-4  # float rounding at the boundary itself
    assert np.array_equal(predict_image8(model, image, card.preprocessing)[at_half], (p1 > 0.5)[at_half])
    derived = derive_version(card, tmp_path / "infection" / "v2", {"decision": {"threshold": 0.3}})
    assert derived.extra["derived_from"]["changed"] == ["decision"]
    model2, card2 = reg.load_model("infection", "v2")
    assert card2.decision == {"threshold": 0.3}
    labels = predict_image8(model2, image, card2.preprocessing)
    margin = np.abs(p1 - 0.3) > 1e-4  # float rounding at the boundary itself
    assert np.array_equal(labels[margin], (p1 > 0.3)[margin].astype(np.uint8))
    assert labels.sum() > predict_image8(model, image, card.preprocessing).sum()
    # a volume through the fused inference network takes the same decision as the plain one
    hu = rng.uniform(-1000, 100, (3, 32, 32)).astype(np.float32)
    fused = fuse_for_inference(model2)
    assert np.array_equal(predict_volume(fused, hu, card2.preprocessing),
                          predict_volume(model2, hu, card2.preprocessing))
    assert not np.array_equal(predict_volume(model2, hu, card2.preprocessing),
                              predict_volume(model, hu, card.preprocessing))
    # the bias is never part of the weights: fine-tuning saves the network as trained
    assert "ctseg_logit_bias" not in model2.state_dict()


@pytest.mark.parametrize("decision, match", [({"threshold": 1.5}, "not a probability"),
                                             ({"threshold": 0}, "not a probability"),
                                             ({"cutoff": 0.3}, "not understood")])
def test_bad_decisions_are_refused(tmp_path, monkeypatch, decision, match):
    monkeypatch.setattr(registry, "bundled_weights_dir", lambda: tmp_path / "none")
    _version(tmp_path, np.zeros((32, 32), np.uint8))
    card = ModelRegistry([tmp_path], user_dir=tmp_path / "user").get_card("infection", "v1")
    with pytest.raises(ModelError, match=match):
        derive_version(card, tmp_path / "infection" / "v2", {"decision": decision})
    assert not (tmp_path / "infection" / "v2").exists()


def test_threshold_needs_one_foreground_class():
    card = ModelCard(target="lungs", version="v9", labels={"right": 1, "left": 2},
                     architecture={**ARCH, "n_classes": 3}, preprocessing=dict(PREP), decision={"threshold": 0.4})
    with pytest.raises(ModelError, match="one foreground class"):
        logit_bias(card)


def test_choose_takes_the_best_dice_within_the_negative_goal():
    rows = [SweepRow(0.5, 0.70, {"neg": 0.2}), SweepRow(0.3, 0.75, {"neg": 0.4}),
            SweepRow(0.2, 0.78, {"neg": 0.6}), SweepRow(0.25, 0.75, {"neg": 0.45})]
    assert choose(rows, 0.5).threshold == 0.3  # 0.2 is better but over the goal; a tie goes higher
    assert choose(rows, 1.0).threshold == 0.2
    with pytest.raises(TrainingError, match="no threshold"):
        choose(rows, 0.1)
