"""The weights registry: cards, versions, sha256 checks, safe loading."""
import json
import shutil

import pytest
import torch

from napari_ctseg.errors import CTSegError, ModelError
from napari_ctseg.models import registry
from napari_ctseg.models.registry import (
    TARGETS,
    ModelCard,
    active_version,
    list_versions,
    load_model,
    sha256_file,
    weight_roots,
    write_version,
)
from napari_ctseg.models.preprocess import Preprocessing, slices_to_input
from napari_ctseg.models.unet import UNet2D, build_model

ARCH = {"name": "unet2d", "in_channels": 3, "n_classes": 3, "base": 4, "depth": 2}
PREP = {"window": [-1024, 600], "context": 1, "size": [16, 16]}


def make_version(root, version="v1", target="lungs", seed=0):
    torch.manual_seed(seed)
    model = build_model(ARCH)
    card = ModelCard(target=target, version=version, labels={"right_lung": 1, "left_lung": 2},
                     architecture=dict(ARCH), preprocessing=dict(PREP),
                     validation={"mean_dice": 0.5}, cite=["synthetic"])
    write_version(root / target / version, model.state_dict(), card)
    return model, card


def test_write_and_load(tmp_path):
    model, card = make_version(tmp_path)
    folder = tmp_path / "lungs" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.pt"]
    stored = json.loads((folder / "card.json").read_text())
    assert stored["sha256"] == sha256_file(folder / "model.pt")
    assert stored["license"] == "non-commercial research use" and stored["created"]
    loaded, got = load_model("lungs", roots=[tmp_path])
    assert not loaded.training and got.version == "v1" and got.labels == {"right_lung": 1, "left_lung": 2}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_versions_sort_naturally_and_newest_is_active(tmp_path):
    for v in ("v2", "v10", "v1"):
        make_version(tmp_path, v)
    assert [c.version for c in list_versions("lungs", roots=[tmp_path])] == ["v1", "v2", "v10"]
    assert active_version("lungs", roots=[tmp_path]) == "v10"
    _, card = load_model("lungs", "v2", roots=[tmp_path])
    assert card.version == "v2"


def test_first_root_wins_and_env_root_comes_first(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    make_version(a, "v1", seed=1)
    make_version(b, "v1", seed=2)
    make_version(b, "v2")
    cards = list_versions("lungs", roots=[a, b])
    assert [c.version for c in cards] == ["v1", "v2"] and cards[0].path == a / "lungs" / "v1"
    monkeypatch.setenv(registry.WEIGHTS_ENV, str(b))
    assert weight_roots()[0] == b and weight_roots()[-1] == registry.bundled_weights_dir()


def test_corrupt_weights_are_refused(tmp_path):
    make_version(tmp_path / "good")
    bad = tmp_path / "bad" / "lungs" / "v1"
    shutil.copytree(tmp_path / "good" / "lungs" / "v1", bad)
    data = bytearray((bad / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt or was modified") as err:
        load_model("lungs", roots=[tmp_path / "bad"])
    assert str(bad / "model.pt") in str(err.value)
    assert isinstance(err.value, CTSegError)


def test_refused_before_unpickling(tmp_path, monkeypatch):
    """A modified file is never handed to torch.load."""
    make_version(tmp_path)
    (tmp_path / "lungs" / "v1" / "model.pt").write_bytes(b"not a model")
    called = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: called.append(1))
    with pytest.raises(ModelError, match="corrupt"):
        load_model("lungs", roots=[tmp_path])
    assert not called


def test_unknown_architecture_is_refused(tmp_path):
    make_version(tmp_path)
    card_path = tmp_path / "lungs" / "v1" / "card.json"
    card = json.loads(card_path.read_text())
    card["architecture"]["name"] = "transformer3d"
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="unknown model architecture 'transformer3d'"):
        load_model("lungs", roots=[tmp_path])
    with pytest.raises(ModelError, match="unknown model architecture"):
        build_model({"name": "resnet"})
    with pytest.raises(ModelError):
        build_model({"name": "unet2d", "in_channels": 1, "n_classes": 2, "wings": 3})


def test_missing_weights_and_versions(tmp_path):
    with pytest.raises(ModelError, match="no lungs model found"):
        load_model("lungs", roots=[tmp_path])
    make_version(tmp_path)
    with pytest.raises(ModelError, match="no lungs model version 'v7'; available: v1"):
        load_model("lungs", "v7", roots=[tmp_path])
    (tmp_path / "lungs" / "v1" / "model.pt").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model("lungs", roots=[tmp_path])
    with pytest.raises(ModelError, match="unknown target"):
        load_model("brain", roots=[tmp_path])


def test_non_tensor_pickles_are_refused(tmp_path):
    """weights_only=True: a file holding arbitrary objects is not loaded even with a valid sha256."""
    _, card = make_version(tmp_path)
    path = tmp_path / "lungs" / "v1" / "model.pt"
    torch.save({"weights": Preprocessing()}, path)
    card.sha256 = sha256_file(path)
    card.save(path.parent)
    with pytest.raises(ModelError, match="not a readable weights file"):
        load_model("lungs", roots=[tmp_path])


def test_weights_that_do_not_fit_are_refused(tmp_path):
    _, card = make_version(tmp_path)
    path = tmp_path / "lungs" / "v1" / "model.pt"
    torch.save(UNet2D(1, 2, base=4, depth=2).state_dict(), path)
    card.sha256 = sha256_file(path)
    card.save(path.parent)
    with pytest.raises(ModelError, match="do not fit"):
        load_model("lungs", roots=[tmp_path])


def test_card_json_round_trip_keeps_unknown_keys():
    card = ModelCard.from_dict({"target": "liver", "version": "v3", "labels": {"liver": 1},
                                "architecture": ARCH, "preprocessing": PREP, "future_field": [1, 2]})
    again = ModelCard.from_json(card.to_json())
    assert again == card and again.to_dict()["future_field"] == [1, 2]
    with pytest.raises(ModelError, match="missing"):
        ModelCard.from_dict({"target": "liver"})


def test_half_precision_weights_load_as_float32(tmp_path):
    model = build_model(ARCH)
    card = ModelCard("lungs", "v1", {"a": 1, "b": 2}, dict(ARCH), dict(PREP))
    write_version(tmp_path / "lungs" / "v1", registry.half_state_dict(model.state_dict()), card)
    loaded, _ = load_model("lungs", roots=[tmp_path])
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


BUNDLED = [t for t in TARGETS if list_versions(t)]


@pytest.mark.parametrize("target", BUNDLED)
def test_bundled_weights_load_and_run(target):
    model, card = load_model(target)
    assert card.version == active_version(target)
    assert card.sha256 and card.license == "non-commercial research use" and card.cite
    for key in ("data", "split", "epochs", "seed", "device"):
        assert key in card.training
    assert card.validation["cases"]
    assert card.weights_path.stat().st_size < 8_000_000  # a few MB at most
    prep = Preprocessing.from_dict(card.preprocessing)
    x = slices_to_input(torch.full((3, 64, 64), -1000.0).numpy(), [1], prep)
    with torch.inference_mode():
        out = model(x)
    assert out.shape == (1, card.n_classes, *prep.size)
    extra = card.training.get("extra_classes", {})  # training-only classes, background in the output
    assert set(card.labels.values()) | set(extra.values()) == set(range(1, card.n_classes))
    assert not set(card.labels) & set(extra)


@pytest.mark.parametrize("target", BUNDLED)
def test_every_bundled_version_defines_its_output(target):
    from napari_ctseg.models.definition import check_postprocess, colors

    for card in list_versions(target):
        assert card.display["colors"] and set(colors(card)) == set(card.labels.values())
        check_postprocess(card.postprocess)
        assert set(card.requires) <= set(BUNDLED) and target not in card.requires
        assert card.validation.get("holdout_chest") or target == "liver"


# --- the registry object -----------------------------------------------------------------

def test_a_registry_of_its_own_keeps_its_choice_in_its_user_folder(tmp_path, private_user_data):
    from napari_ctseg.models.registry import ModelRegistry

    shared, user = tmp_path / "shared", tmp_path / "user"
    make_version(shared, "v1")
    make_version(shared, "v2", seed=1)
    reg = ModelRegistry([shared], user_dir=user)
    assert reg.roots == (user, shared)
    assert reg.active_version("lungs") == "v2"
    assert reg.set_active_version("lungs", "v1") == "v1"
    assert json.loads((user / "active_models.json").read_text()) == {"lungs": "v1"}
    # Nothing reached the user's own folder, and another registry over the same weights is unaffected.
    assert not (private_user_data / "weights" / "active_models.json").exists()
    assert ModelRegistry([shared], user_dir=tmp_path / "other").active_version("lungs") == "v2"
    # A registry is a value: it survives pickling (fine-tuning's child process gets one).
    import pickle

    again = pickle.loads(pickle.dumps(reg))
    assert again == reg and again.active_version("lungs") == "v1"
    with pytest.raises(ModelError, match="no user folder"):
        ModelRegistry([shared]).set_active_version("lungs", "v1")


def test_targets_are_discovered_from_the_registry_in_display_order(tmp_path):
    from napari_ctseg.models.registry import ModelRegistry

    _, card = make_version(tmp_path, target="spleen")
    card.labels = {"spleen": 1}
    card.display = {"order": 5}
    card.save()
    make_version(tmp_path, target="lungs")  # no display order: 0
    (tmp_path / "empty").mkdir()  # a folder without a version is no target
    reg = ModelRegistry([tmp_path])
    assert reg.targets() == ["lungs", "spleen"]
    assert reg.get_card("spleen").labels == {"spleen": 1}
    from napari_ctseg.segmentation.inference import parse_targets

    assert parse_targets("spleen,lungs", reg) == ["spleen", "lungs"]
    with pytest.raises(CTSegError, match="choose from lungs, spleen"):
        parse_targets("liver", reg)


def test_cli_weights_option_reaches_every_model_command(tmp_path, capsys, monkeypatch):
    from napari_ctseg.cli import main

    monkeypatch.setattr(registry, "bundled_weights_dir", lambda: tmp_path / "none")
    make_version(tmp_path / "extra", "v9")
    assert main(["models", "list", "--weights", str(tmp_path / "extra"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["target"], r["version"], r["active"], r["source"]) for r in rows] == [("lungs", "v9", True, "folder")]
    assert main(["models", "list"]) == 0  # without it, the folder is not searched
    assert "v9" not in capsys.readouterr().out
    assert main(["models", "list", "brain"]) == 2
    assert "unknown target 'brain'" in capsys.readouterr().err


def test_files_are_replaced_atomically_or_not_at_all(tmp_path):
    from napari_ctseg._files import replaced_atomically, write_atomically

    path = tmp_path / "sub" / "card.json"
    write_atomically(path, "first")
    with pytest.raises(RuntimeError):
        with replaced_atomically(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert path.read_text() == "first"  # untouched, and no temporary file left beside it
    assert [p.name for p in path.parent.iterdir()] == ["card.json"]
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second" and oct(path.stat().st_mode & 0o044) == oct(0o044)


def test_a_derived_version_has_its_base_network_and_a_new_definition(tmp_path, capsys, monkeypatch):
    """``ctseg models derive``: the weights copied byte for byte (the card's sha256 still holds),
    only the definition fields replaced, the origin recorded; anything else refused."""
    import numpy as np

    from napari_ctseg.cli import main
    from napari_ctseg.models.definition import apply_postprocess
    from napari_ctseg.models.registry import ModelRegistry, derive_version

    monkeypatch.setattr(registry, "bundled_weights_dir", lambda: tmp_path / "none")
    root = tmp_path / "w"
    _, base = make_version(root, "v1")
    definition = tmp_path / "def.json"
    steps = [{"op": "remove_small", "min_mm3": 8.0}]
    definition.write_text(json.dumps({"postprocess": steps, "notes": "v1 without specks"}))
    assert main(["models", "derive", "lungs", "v1", "--weights", str(root), "--out", str(root / "lungs" / "v2"),
                 "--definition", str(definition)]) == 0
    assert "postprocess changed" in capsys.readouterr().out
    assert main(["models", "list", "lungs", "--weights", str(root)]) == 0
    assert "v1's network, new definition" in capsys.readouterr().out
    reg = ModelRegistry([root], user_dir=tmp_path / "user")
    card = reg.get_card("lungs", "v2")
    assert card.postprocess == steps and card.notes == "v1 without specks"
    assert card.extra["derived_from"] == {"version": "v1", "sha256": base.sha256, "changed": ["postprocess"]}
    assert sha256_file(card.weights_path) == base.sha256 == card.sha256
    assert card.architecture == base.architecture and card.preprocessing == base.preprocessing
    reg.load_model("lungs", "v2")  # its checksum holds
    assert reg.active_version("lungs") == "v2"
    raw = np.zeros((4, 8, 8), np.uint8)
    raw[0, 0, 0] = 1
    raw[1:4, 2:6, 2:6] = 1
    assert apply_postprocess(card, raw, spacing=(1.0, 1.0, 1.0))[0, 0, 0] == 0  # the new step runs
    assert apply_postprocess(base, raw, spacing=(1.0, 1.0, 1.0))[0, 0, 0] == 1
    with pytest.raises(ModelError, match="changes only"):
        derive_version(base, root / "lungs" / "v3", {"preprocessing": {}})
    with pytest.raises(ModelError, match="not one of"):
        derive_version(base, root / "lungs" / "v3", {"postprocess": [{"op": "dilate"}]})
    with pytest.raises(ModelError, match="already holds"):
        derive_version(base, root / "lungs" / "v2", {"postprocess": []})
    assert not (root / "lungs" / "v3").exists()
    definition.write_text("[1, 2]")
    assert main(["models", "derive", "lungs", "v1", "--weights", str(root), "--out", str(tmp_path / "x"),
                 "--definition", str(definition)]) == 2
    assert "must hold a JSON object" in capsys.readouterr().err


def test_bundled_derived_versions_are_reproducible_from_their_definition():
    """A bundled version derived from another (its card says so) is its base's network and the
    definition file the README names: derive it again and compare."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for target in TARGETS:
        for card in list_versions(target, roots=[registry.bundled_weights_dir()]):
            origin = card.extra.get("derived_from")
            if not origin:
                continue
            base = registry.get_card(target, origin["version"], roots=[registry.bundled_weights_dir()])
            assert card.sha256 == base.sha256 == origin["sha256"]
            spec = json.loads((repo / "scripts" / "definitions" / f"{target}_{card.version}.json").read_text())
            spec.pop("notes", None)
            for key, value in spec.items():
                assert getattr(card, key) == value, (target, card.version, key)


def test_the_same_weights_make_the_same_file(tmp_path):
    model = build_model({"name": "unet2d", "base": 4, "depth": 2, "in_channels": 1, "n_classes": 2})
    state = registry.half_state_dict(model.state_dict())
    cards = []
    for name in ("v1", "v2"):
        card = ModelCard("lungs", name, {"right lung": 1}, {"base": 4, "depth": 2}, {})
        cards.append(write_version(tmp_path / "lungs" / name, state, card))
    # A retrained version with the same weights has the same sha256, whatever its folder.
    assert cards[0].sha256 == cards[1].sha256 == sha256_file(tmp_path / "lungs" / "v2" / "model.pt")
    assert (tmp_path / "lungs" / "v1" / "model.pt").read_bytes() == (tmp_path / "lungs" / "v2" / "model.pt").read_bytes()
