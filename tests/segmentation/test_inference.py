"""The inference engine on synthetic volumes with tiny untrained models (shape, geometry, post-processing)."""
import threading

import numpy as np
import pytest
import torch
from synthetic import make_hu_volume, write_nifti

from napari_ctseg.errors import CTSegError, ModelError
from napari_ctseg.segmentation.inference import (
    infection_per_lung,
    slices_with,
    Cancelled,
    ModelSet,
    choose_device,
    largest_components,
    lung_involvement_pct,
    postprocess,
    segment,
    segment_steps,
    volumes_ml,
)
from napari_ctseg.io import read_nifti




@pytest.fixture
def volume(tmp_path):
    return read_nifti(write_nifti(tmp_path / "ct.nii.gz", make_hu_volume((40, 36, 11)),
                                  np.diag([-0.8, -0.8, 2.0, 1.0])))


def test_masks_on_volume_grid(tiny_weights, volume):
    result = segment(volume, "lungs,liver,infection", "cpu")
    assert set(result.masks) == {"lungs", "liver", "infection"}
    for target, mask in result.masks.items():
        assert mask.shape == volume.shape and mask.dtype == np.uint8
    assert set(np.unique(result.masks["lungs"])) <= {0, 1, 2}
    assert result.device == "cpu"
    assert result.versions == {"lungs": "t1", "liver": "t1", "infection": "t1"}
    # infection only inside the lungs
    assert not np.any((result.masks["infection"] > 0) & (result.masks["lungs"] == 0))


def test_batching_does_not_change_the_output(tiny_weights, volume):
    models = ModelSet()
    one = segment(volume, ["lungs", "liver"], "cpu", models=models, batch_size=1)
    many = segment(volume, ["lungs", "liver"], "cpu", models=models, batch_size=7)
    for t in one.masks:
        assert np.array_equal(one.masks[t], many.masks[t])


def test_progress_and_cancel(tiny_weights, volume):
    reports = []
    segment(volume, ["liver"], "cpu", progress=reports.append, batch_size=2)
    assert reports[-1].done == reports[-1].total == volume.shape[0]
    assert [r.done for r in reports] == sorted(r.done for r in reports)

    cancel = threading.Event()

    def stop_after_first(report):
        cancel.set()

    with pytest.raises(Cancelled):
        segment(volume, ["liver"], "cpu", progress=stop_after_first, cancel=cancel, batch_size=2)


def test_generator_can_be_closed_midway(tiny_weights, volume):
    steps = segment_steps(volume, ["lungs"], "cpu", batch_size=1)
    next(steps)
    steps.close()  # what a napari worker's quit() does: no exception, nothing returned


def test_device_fallback_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == (torch.device("cpu"), None)
    dev, note = choose_device("cuda")
    assert dev.type == "cpu" and "CUDA is not available" in note
    with pytest.raises(CTSegError, match="unknown device"):
        choose_device("tpu")


def test_cuda_request_runs_on_cpu_with_note(tiny_weights, volume, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = segment(volume, ["liver"], "cuda")
    assert result.device == "cpu" and any("CUDA" in n for n in result.notes)


def test_corrupt_weights_refused(tiny_weights, volume):
    path = tiny_weights / "liver" / "t1" / "model.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt or was modified"):
        segment(volume, ["liver"], "cpu")


def test_unknown_target(volume):
    with pytest.raises(CTSegError, match="unknown target"):
        segment(volume, ["spleen"], "cpu")


def test_postprocess_keeps_one_component_per_lung_and_fills_holes():
    raw = np.zeros((10, 30, 30), np.uint8)
    raw[2:8, 5:15, 3:12] = 1      # right lung
    raw[4, 9, 6] = 0              # a hole
    raw[2:8, 5:15, 18:27] = 2     # left lung
    raw[0, 0, 0] = 1              # a speck of "right lung" far away
    raw[9, 29, 29] = 2
    out = postprocess(_card("lungs"), raw)
    assert out[0, 0, 0] == 0 and out[9, 29, 29] == 0
    assert out[4, 9, 6] == 1
    assert np.count_nonzero(out == 1) == 6 * 10 * 9 and np.count_nonzero(out == 2) == 6 * 10 * 9


def test_postprocess_infection_inside_lungs():
    raw = np.ones((4, 5, 5), np.uint8)
    lungs = np.zeros_like(raw)
    lungs[:, 1:3, 1:3] = 2
    air = np.full(raw.shape, -850.0, np.float32)  # no tissue above or below: nothing else dropped
    out = postprocess(_card("infection"), raw, {"lungs": lungs}, (2.0, 1.0, 1.0), hu=air)
    assert np.array_equal(out > 0, lungs > 0)
    with pytest.raises(CTSegError, match="lungs mask"):
        postprocess(_card("infection"), raw)


def test_largest_components_keep_n():
    m = np.zeros((5, 20, 20), bool)
    m[0, 0:3, 0:3] = True
    m[2:5, 10:20, 10:20] = True
    m[0, 10:15, 0:5] = True
    kept = largest_components(m, keep=2)
    assert kept[3, 15, 15] and kept[0, 12, 2] and not kept[0, 1, 1]


def test_volumes_and_involvement():
    lungs = np.zeros((2, 10, 10), np.uint8)
    lungs[:, :5] = 1
    lungs[:, 5:] = 2
    inf = np.zeros_like(lungs)
    inf[0, :5] = 1
    vols = volumes_ml(lungs, _card("lungs"), voxel_ml=0.002)
    assert vols == pytest.approx({"right lung": 0.2, "left lung": 0.2})
    assert lung_involvement_pct(inf, lungs) == pytest.approx(25.0)
    assert lung_involvement_pct(inf, np.zeros_like(lungs)) is None
    per_lung = infection_per_lung(inf, lungs, _card("lungs"), voxel_ml=0.002)
    assert per_lung["right lung"] == pytest.approx({"ml": 0.1, "pct": 50.0})
    assert per_lung["left lung"] == pytest.approx({"ml": 0.0, "pct": 0.0})
    assert infection_per_lung(inf, (lungs > 0).astype(np.uint8), None, 0.002) is None  # one label only
    assert slices_with(inf) == (0, 0, 1)
    assert slices_with(np.zeros_like(inf)) == (0, 0, 0)


def _card(target):
    """A card with the starter definition of ``target`` (as ctseg train writes it)."""
    from napari_ctseg.models.definition import starter_definition
    from napari_ctseg.models.registry import ModelCard

    labels = {"lungs": {"right_lung": 1, "left_lung": 2}, "liver": {"liver": 1},
              "infection": {"infection": 1}}[target]
    return ModelCard(target=target, version="x", labels=labels, architecture={}, preprocessing={},
                     **starter_definition(target, labels))


def test_card_postprocess_steps_and_unknown_op():
    from napari_ctseg.errors import ModelError
    from napari_ctseg.models.definition import apply_postprocess

    card = _card("liver")
    card.postprocess = [{"op": "remove_small", "min_mm3": 8.0}]
    raw = np.zeros((6, 10, 10), np.uint8)
    raw[0:2, 0:2, 0:1] = 1          # 4 voxels of 1 mm3: removed
    raw[2:5, 4:8, 4:8] = 1          # 48 voxels: kept
    out = apply_postprocess(card, raw, spacing=(1.0, 1.0, 1.0))
    assert out[0, 0, 0] == 0 and out[3, 5, 5] == 1 and out.sum() == 48
    card.postprocess = [{"op": "dilate"}]
    with pytest.raises(ModelError, match="not one of"):
        apply_postprocess(card, raw)


def test_partial_volume_next_to_the_dome_and_apex_is_dropped():
    """drop_partial_volume removes the mask within ``mm`` along z (at least one slice) of tissue
    outside the lungs, above or below; tissue beside a voxel in its own slice does not count."""
    from napari_ctseg.errors import ModelError
    from napari_ctseg.models.definition import apply_postprocess

    card = _card("infection")
    assert card.postprocess[-1]["op"] == "drop_partial_volume"  # what ctseg train writes
    hu = np.full((8, 10, 10), -850.0, np.float32)
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[1:6] = 1
    hu[0] = 40.0      # soft tissue over the apex
    hu[6:] = 40.0     # the diaphragm's dome under the base
    hu[3, 4, 4] = 40.0  # a vessel in the middle slice, outside the lung mask
    lungs[3, 4, 4] = 0
    raw = lungs.copy()  # "infection" everywhere in the lungs
    out = apply_postprocess(card, raw, {"lungs": lungs}, (2.0, 1.0, 1.0), hu=hu) > 0
    # 3 mm at 2 mm slices: two slices from the tissue above (1, 2) and below (4, 5) are dropped
    assert not out[[1, 2, 4, 5]].any()
    assert out[3].sum() == 99 and out[3, 4, 5] and out[3, 3, 4]  # beside the vessel in-plane: kept
    out5 = apply_postprocess(card, raw, {"lungs": lungs}, (5.0, 1.0, 1.0), hu=hu) > 0
    # thick slices: one slice each (and the vessel's own column one slice up and down)
    assert not out5[[1, 5]].any() and out5[2].sum() == out5[4].sum() == 99 and not out5[2, 4, 4]
    air = hu.copy()
    air[6:] = -1000.0  # air, not tissue, under the lungs (a lung that leaves the scan): nothing dropped there
    out_air = apply_postprocess(card, raw, {"lungs": lungs}, (2.0, 1.0, 1.0), hu=air) > 0
    assert out_air[4:6].sum() == lungs[4:6].sum() - 2  # only the vessel's own column
    with pytest.raises(ModelError, match="needs the scan's HU"):
        apply_postprocess(card, raw, {"lungs": lungs}, (2.0, 1.0, 1.0))


def test_legacy_card_gets_the_starter_definition():
    from napari_ctseg.models.registry import ModelCard

    card = ModelCard.from_dict({"target": "infection", "version": "v1-ft1", "labels": {"infection": 1},
                                "architecture": {}, "preprocessing": {}})
    assert card.requires == ["lungs"] and card.postprocess[0]["op"] == "restrict_to"
    assert card.display["colors"]["infection"].startswith("#")


def test_fused_model_gives_the_same_output(tiny_weights):
    from napari_ctseg.segmentation.inference import fuse_for_inference
    from napari_ctseg.models.registry import load_model

    model, _ = load_model("lungs")
    model.eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(model(x), fuse_for_inference(model)(x), atol=1e-4)


def test_segment_gives_torch_threads_back(tiny_weights):
    import torch
    from synthetic import make_hu_volume

    from napari_ctseg.segmentation.inference import segment
    from napari_ctseg.io._common import build_volume

    vol = build_volume(make_hu_volume((24, 24, 6)), np.diag([0.8, 0.8, 2.0, 1.0]), name="t",
                       source_path="", source_kind="nifti")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        segment(vol, "liver", "cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_largest_components_in_place_and_across_slabs():
    # Components that span more slices than one slab (32) and touch the box's edges.
    m = np.zeros((80, 20, 20), bool)
    m[2:75, 2:8, 2:8] = True  # the largest: 73 slices
    m[5:40, 12:18, 12:18] = True  # the second
    m[60:62, 15:17, 15:17] = True  # a speck
    expected = m.copy()
    expected[60:62, 15:17, 15:17] = False
    assert np.array_equal(largest_components(m, keep=2), expected)
    given = m.copy()
    out = largest_components(given, keep=2, in_place=True)
    assert out is given and np.array_equal(given, expected)
    assert not largest_components(np.zeros((3, 4, 4), bool), in_place=True).any()


# --- in a child process (what Segment volume does) -------------------------------------------

def _shared_memory_now() -> set:
    from pathlib import Path

    return {p.name for p in Path("/dev/shm").glob("psm_*")} if Path("/dev/shm").is_dir() else set()


def test_a_child_process_gives_the_same_masks_and_frees_its_shared_memory(tiny_weights, volume):
    from napari_ctseg.editing.corrections import slice_digests
    from napari_ctseg.jobs import WorkerProcess, run
    from napari_ctseg.segmentation.inference import segment_in_child

    before = _shared_memory_now()
    here = segment(volume, "lungs,liver,infection", "cpu")
    worker = WorkerProcess(warm=("napari_ctseg.segmentation.inference",))
    try:
        events = []
        for _ in range(2):  # the second run reuses the warm process and its loaded models
            result, digests = run(segment_in_child(volume, "lungs,liver,infection", "cpu", process=worker),
                                  on_event=events.append)
            assert set(result.masks) == set(here.masks)
            for target, mask in here.masks.items():
                assert result.masks[target].dtype == mask.dtype and np.array_equal(result.masks[target], mask)
                assert digests[target] == slice_digests(mask)
            assert result.volumes_ml == here.volumes_ml
        assert events and events[-1].done == events[-1].total
        # a given lung mask goes over too: infection is then looked for inside it only
        lungs = np.zeros(volume.shape, np.uint8)
        result, _ = run(segment_in_child(volume, ["infection"], "cpu", lungs=lungs, process=worker))
        assert not result.masks["infection"].any()
    finally:
        worker.close()
    assert _shared_memory_now() == before


def test_a_child_run_cancels_and_notes_the_device_from_here(tiny_weights, volume, monkeypatch):
    from napari_ctseg.jobs import CancelToken, run
    from napari_ctseg.segmentation.inference import segment_in_child

    before = _shared_memory_now()
    cancel = CancelToken()
    with pytest.raises(Cancelled):
        run(segment_in_child(volume, ["liver"], "cpu", cancel=cancel), on_event=lambda e: cancel.cancel(),
            cancel=cancel)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result, _ = run(segment_in_child(volume, ["liver"], "cuda"))
    assert result.device == "cpu" and any("CUDA is not available" in n for n in result.notes)
    assert _shared_memory_now() == before


def test_grow_into_hu_takes_the_partial_volume_rim_only():
    """One face-neighbour layer into background between the bounds; never tissue, never air
    below the floor, never a voxel both labels reach; nothing beyond one step."""
    from napari_ctseg.models.definition import apply_postprocess
    from napari_ctseg.models.registry import ModelCard

    raw = np.zeros((5, 12, 20), np.uint8)
    raw[1:4, 3:9, 2:8] = 1    # right lung
    raw[1:4, 3:9, 12:18] = 2  # left lung
    hu = np.full(raw.shape, 40.0, np.float32)  # soft tissue everywhere else
    hu[raw > 0] = -850.0
    hu[1:4, 3:9, 8] = -420.0   # the right lung's partial-volume rim (x = 8) ...
    hu[1:4, 3:9, 9] = -420.0   # ... and the voxel beyond it (two steps away)
    hu[1:4, 3:9, 1] = -990.0   # air beside the right lung (an airway): not rim
    hu[1:4, 3:9, 10:12] = -420.0  # between the lungs at x = 10, 11: x = 11 touches the left lung
    card = ModelCard("lungs", "t", {"right_lung": 1, "left_lung": 2}, {}, {},
                     postprocess=[{"op": "grow_into_hu", "below": -300.0, "above": -950.0, "steps": 1}])
    out = apply_postprocess(card, raw.copy(), {}, (2.0, 1.0, 1.0), hu=hu)
    assert np.all(out[1:4, 3:9, 8] == 1)             # the rim joins the right lung
    assert np.all(out[1:4, 3:9, 9] == 0)             # one step only
    assert np.all(out[1:4, 3:9, 1] == 0)             # air below the floor stays out
    assert np.all(out[1:4, 3:9, 11] == 2)            # the left lung's rim
    assert np.all(out[0, 3:9, 2:8] == 0) and np.all(out[4, 3:9, 2:8] == 0)  # tissue above and below
    assert np.array_equal(out[raw > 0], raw[raw > 0])
    # a voxel both lungs reach stays background
    raw2 = np.zeros((1, 3, 5), np.uint8)
    raw2[0, :, 0], raw2[0, :, 2] = 1, 2  # x = 1 is beside both, x = 3 beside the left only
    hu2 = np.full(raw2.shape, -420.0, np.float32)
    hu2[raw2 > 0] = -850.0
    out2 = apply_postprocess(card, raw2.copy(), {}, (1.0, 1.0, 1.0), hu=hu2)
    assert np.all(out2[0, :, 1] == 0) and np.all(out2[0, :, 3] == 2) and np.all(out2[0, :, 4] == 0)


def test_without_room_in_shared_memory_it_segments_here_and_says_so(tiny_weights, volume, monkeypatch):
    """A container's /dev/shm is often 64 MiB: writing past it would kill the viewer (SIGBUS),
    so a volume that does not fit is segmented in this process instead."""
    from napari_ctseg import jobs
    from napari_ctseg.jobs import SharedArray, SharedMemoryFull, run
    from napari_ctseg.segmentation.inference import segment_in_child

    monkeypatch.setattr(jobs, "shared_memory_free", lambda: 1000)
    with pytest.raises(SharedMemoryFull):
        SharedArray((100, 100), np.uint8)
    result, digests = run(segment_in_child(volume, ["liver"], "cpu"))
    here = segment(volume, ["liver"], "cpu")
    assert np.array_equal(result.masks["liver"], here.masks["liver"])
    assert any("not a worker process" in n for n in result.notes) and len(digests["liver"]) == volume.shape[0]
