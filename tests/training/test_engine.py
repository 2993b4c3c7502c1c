"""The training engine on its own (a toy network and batches): what it keeps, writes and leaves."""
import json
import math

import pytest
import torch

from napari_ctseg.training.engine import Evaluation, TrainingPlan, TrainingReport, partial_dir, run
from napari_ctseg.errors import TrainingError
from napari_ctseg.models.registry import ModelCard, sha256_file


def toy_plan(out_dir, scores=(0.2, 0.9, 0.5), lr=1e-2, **kw) -> TrainingPlan:
    """A 1x1 convolution trained on random batches; epoch e is scored ``scores[e - 1]``."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 1)
    gen = torch.Generator().manual_seed(0)
    seen = {}

    def batch():
        x = torch.rand(2, 1, 4, 4, generator=gen)
        return x, (x[:, 0] > 0.5).long()

    def evaluate(model, epoch):
        seen[epoch] = model.weight.detach().clone()
        return Evaluation(scores[epoch - 1], {"val_dice": scores[epoch - 1]}, summary=f"score {scores[epoch - 1]}")

    def finish(model, outcome):
        card = ModelCard(target="liver", version=out_dir.name, labels={"liver": 1},
                         architecture={"n_classes": 2}, preprocessing={})
        card.training = {"best_epoch": outcome.best_epoch, "stopped": outcome.stopped,
                         "history": outcome.history}
        return card

    def published(card, outcome):
        return card, {"message": f"wrote {card.version}"}

    plan = TrainingPlan(model, torch.device("cpu"), out_dir, len(scores), 3, lr, 0.0, 0, 0.1, batch,
                        evaluate, finish, published, save_half=False, **kw)
    plan.seen = seen
    return plan


def test_keeps_the_best_epoch_and_reports_progress(tmp_path):
    out = tmp_path / "liver" / "v1"
    plan = toy_plan(out)
    reports = list(run(plan))
    assert all(isinstance(r, TrainingReport) and r.message for r in reports)
    assert [r.done for r in reports] == sorted(r.done for r in reports)  # never goes back
    assert {r.total for r in reports} == {9} and reports[-1].done == 9 and reports[-1].kind == "done"
    assert [r.done for r in reports if r.kind == "epoch"] == [3, 6, 9]
    card = reports[-1].card
    assert card.training["best_epoch"] == 2 and card.path == out
    stored = torch.load(out / "model.pt")
    torch.testing.assert_close(stored["weight"], plan.seen[2])  # epoch 2's weights, not the last
    assert not torch.equal(stored["weight"], plan.seen[3])
    assert card.sha256 == sha256_file(out / "model.pt")
    assert [h["val_dice"] for h in card.training["history"]] == [0.2, 0.9, 0.5]
    assert not partial_dir(out).exists()


def test_keep_last_writes_the_last_state(tmp_path):
    out = tmp_path / "liver" / "v1"
    plan = toy_plan(out, keep="last")
    list(run(plan))
    torch.testing.assert_close(torch.load(out / "model.pt")["weight"], plan.seen[3])


def test_cancel_leaves_no_partial_folder_and_no_version(tmp_path):
    out = tmp_path / "liver" / "v1"
    checkpoints = []

    def checkpoint(outcome):
        checkpoints.append(outcome.epochs_run)
        return toy_plan(out).finish(None, outcome)

    gen = run(toy_plan(out, checkpoint=checkpoint))
    for r in gen:
        if r.kind == "step" and r.epoch == 2:
            assert (partial_dir(out) / "model.pt").is_file()  # epoch 1's checkpoint
            gen.close()
            break
    assert checkpoints == [1]
    assert not out.exists() and not partial_dir(out).exists()


def test_cancel_with_keep_on_cancel_writes_the_best_so_far(tmp_path):
    out = tmp_path / "liver" / "v1"
    gen = run(toy_plan(out, keep_on_cancel=True))
    for r in gen:
        if r.kind == "epoch" and r.epoch == 2:
            gen.close()
            break
    assert (out / "model.pt").is_file() and not partial_dir(out).exists()


def test_a_diverging_loss_stops_with_a_clear_error_and_leaves_nothing(tmp_path):
    out = tmp_path / "liver" / "v1"
    plan = toy_plan(out, penalty=lambda: torch.tensor(math.nan))
    with pytest.raises(TrainingError, match="lower the learning rate"):
        list(run(plan))
    assert not out.exists() and not partial_dir(out).exists()


def test_an_existing_folder_is_filled_file_by_file(tmp_path):
    out = tmp_path / "liver" / "v1"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    list(run(toy_plan(out)))
    assert (out / "notes.txt").read_text() == "mine"
    assert sha256_file(out / "model.pt") == json.loads((out / "card.json").read_text())["sha256"]
    assert not partial_dir(out).exists()


def test_weight_average_is_what_is_evaluated_and_written(tmp_path):
    out = tmp_path / "liver" / "v1"
    plan = toy_plan(out, keep="last", ema_decay=0.5)
    weights = []  # the optimiser's weights after each step, read through the batches
    batch = plan.batch

    def watching():
        weights.append(plan.model.weight.detach().clone())
        return batch()

    evaluate = plan.evaluate

    def evaluating(model, epoch):
        assert model is not plan.model
        if epoch == 3:
            weights.append(plan.model.weight.detach().clone())
        return evaluate(model, epoch)

    plan.batch, plan.evaluate = watching, evaluating
    list(run(plan))
    steps = weights[1:]  # after step 1, 2, ..., 9
    ema = steps[0]
    for w in steps[1:]:
        ema = 0.5 * ema + 0.5 * w
    stored = torch.load(out / "model.pt")
    torch.testing.assert_close(stored["weight"], ema)  # the average is written,
    torch.testing.assert_close(plan.seen[3], ema)  # and it is what the last evaluation saw
    assert not torch.allclose(ema, steps[-1])  # not the last step's weights
