"""Save corrected mask as DICOM SEG from Mask tools (the default for a scan opened from DICOM),
recorded as a correction that fine-tuning reads back; NIfTI scans keep NIfTI and refuse .dcm."""
from __future__ import annotations

import numpy as np
import pytest
from synthetic import make_hu_volume, write_dicom_series, write_nifti

from napari_ctseg.editing import corrections
from napari_ctseg.io import read_scan
from napari_ctseg.io.dicom_objects import read_seg
from napari_ctseg.training import read_mask
from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget

pytest.importorskip("highdicom")


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def test_a_dicom_scans_correction_is_saved_as_seg_and_read_back(make_napari_viewer, tmp_path):
    dcm = tmp_path / "series"
    write_dicom_series(dcm, make_hu_volume((36, 40, 6)).transpose(2, 1, 0))
    viewer = make_napari_viewer()
    image = viewer.open(dcm, plugin="napari-ctseg")[0]
    mask = np.zeros(image.data.shape, np.uint8)
    mask[1:5, 8:20, 6:18], mask[1:5, 8:20, 22:34] = 1, 2
    layer = viewer.add_labels(mask, name="lungs", scale=image.scale, translate=image.translate,
                              metadata={**image.metadata, "target": "lungs", "model_version": "v2"})
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._set_layer(layer)
    assert widget.name_edit.text().endswith("_lungs_corrected.dcm")  # DICOM in, DICOM SEG out
    layer.data_setitem((np.array([3]), np.array([10]), np.array([10])), 0)  # a correction
    written = widget.save_corrected(overwrite=True)
    assert written is not None and written.suffix == ".dcm"
    ct = read_scan(dcm)
    maps = read_seg(written, ct)
    assert {s.name for m in maps for s in m.segments} == {"right lung", "left lung"}
    seg = maps[0].segments[0]
    assert "napari-ctseg lungs v2" in seg.algorithm and "SEMIAUTOMATIC" in seg.algorithm
    back = read_mask(written, ct, "lungs")  # what fine-tuning reads
    assert np.array_equal(back, np.asarray(layer.data))
    entry = corrections.list_corrections("lungs")[-1]
    assert entry.mask_path.endswith(".dcm") and entry.changed_slices == [3]


def test_a_nifti_scan_saves_nifti_and_refuses_seg(make_napari_viewer, tmp_path):
    nii = write_nifti(tmp_path / "scan.nii.gz", make_hu_volume((36, 40, 6)), np.eye(4))
    viewer = make_napari_viewer()
    image = viewer.open(nii, plugin="napari-ctseg")[0]
    layer = viewer.add_labels(np.ones(image.data.shape, np.uint8), name="liver", scale=image.scale,
                              metadata={**image.metadata, "target": "liver", "model_version": "v3"})
    widget = MaskToolsWidget(viewer)
    widget._set_layer(layer)
    assert widget.name_edit.text().endswith(".nii.gz")
    widget.name_edit.setText("liver.dcm")
    assert widget.save_corrected(overwrite=True) is None
    assert "DICOM SEG needs the DICOM CT" in widget.status.text()
    assert not (tmp_path / "liver.dcm").exists()


def test_compare_with_an_experts_seg_opened_beside_the_ct(make_napari_viewer, tmp_path):
    """A SEG in the series' folder opens as its own Labels layer; Mask tools' Compare gives Dice and
    the volume difference of our label against it."""
    from napari_ctseg.evaluation.metrics import dice
    from napari_ctseg.io.dicom_objects import write_seg

    folder = tmp_path / "study"
    write_dicom_series(folder, make_hu_volume((36, 40, 6)).transpose(2, 1, 0))
    ct = read_scan(folder)
    expert = np.zeros(ct.hu.shape, np.uint8)
    expert[1:5, 8:20, 6:18] = 1
    write_seg(expert, {1: "liver"}, ct, folder / "expert_seg.dcm", algorithm="manual")
    viewer = make_napari_viewer()
    layers = viewer.open(folder, plugin="napari-ctseg")
    seg_layer = next(ly for ly in layers if ly.name != layers[0].name)
    ours = expert.copy()
    ours[1:5, 8:20, 16:20] = 1  # two columns too wide
    layer = viewer.add_labels(ours, name="liver", scale=layers[0].scale, translate=layers[0].translate,
                              metadata={**layers[0].metadata, "target": "liver", "model_version": "v3"})
    widget = MaskToolsWidget(viewer)
    widget._set_layer(layer)
    panel = widget.compare_panel
    assert seg_layer.name in [panel.other_combo.itemText(i) for i in range(panel.other_combo.count())]
    panel.other_combo.setCurrentText(seg_layer.name)
    out = panel.compare()
    assert out["dice"] == pytest.approx(dice(ours == 1, np.asarray(seg_layer.data) > 0))
    assert 0.7 < out["dice"] < 0.95 and out["difference_ml"] > 0
    assert "Dice" in panel.result_label.text()
