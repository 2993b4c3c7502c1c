"""RTSTRUCT from napari: Mask tools' Format choice (NIfTI, DICOM SEG, RTSTRUCT) and File > Save
Selected Layers with a name ending ``rtstruct.dcm``; read back onto the scan."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
from synthetic import make_hu_volume, write_dicom_series

from napari_ctseg.editing import corrections
from napari_ctseg.io import read_scan
from napari_ctseg.io.dicom_objects import read_rtstruct
from napari_ctseg.training import read_mask
from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget


def _scan_and_lungs(viewer, tmp_path):
    dcm = tmp_path / "series"
    write_dicom_series(dcm, make_hu_volume((36, 40, 6)).transpose(2, 1, 0))
    image = viewer.open(dcm, plugin="napari-ctseg")[0]
    mask = np.zeros(image.data.shape, np.uint8)
    mask[1:5, 8:20, 6:18], mask[1:5, 8:20, 22:34] = 1, 2
    mask[2, 12:15, 10:13] = 0  # a hole
    layer = viewer.add_labels(mask, name="lungs", scale=image.scale, translate=image.translate,
                              metadata={**image.metadata, "target": "lungs", "model_version": "v2"})
    return dcm, layer


def test_mask_tools_saves_an_rtstruct_when_chosen(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    viewer = make_napari_viewer()
    dcm, layer = _scan_and_lungs(viewer, tmp_path)
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._set_layer(layer)
    assert widget.format_box.currentText() == "DICOM SEG" and widget.name_edit.text().endswith("_corrected.dcm")
    widget.format_box.setCurrentText("RTSTRUCT")
    assert widget.name_edit.text().endswith("_lungs_corrected_rtstruct.dcm")
    widget.name_edit.setText("lungs.nii.gz")  # the name's ending decides, and the choice follows it
    assert widget.format_box.currentText() == "NIfTI"
    widget.name_edit.setText("lungs_rtstruct.dcm")
    assert widget.format_box.currentText() == "RTSTRUCT"
    layer.data_setitem((np.array([3]), np.array([10]), np.array([10])), 0)  # a correction
    written = widget.save_corrected(overwrite=True)
    assert written is not None and written.name == "lungs_rtstruct.dcm"
    ds = pydicom.dcmread(written)
    assert ds.Modality == "RTSTRUCT"
    assert {r.ROIName: r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence} == \
        {"right lung": "SEMIAUTOMATIC", "left lung": "SEMIAUTOMATIC"}
    ct = read_scan(dcm)
    assert {s.name for m in read_rtstruct(written, ct) for s in m.segments} == {"right lung", "left lung"}
    assert np.array_equal(read_mask(written, ct, "lungs"), np.asarray(layer.data))  # what fine-tuning reads
    assert corrections.list_corrections("lungs")[-1].mask_path.endswith("lungs_rtstruct.dcm")


def test_save_selected_layers_as_rtstruct(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    dcm, layer = _scan_and_lungs(viewer, tmp_path)
    layer.features = pd.DataFrame({"name": ["background", "right lung", "left lung"]})
    viewer.layers.selection = {layer}
    path = tmp_path / "lungs_rtstruct.dcm"
    assert viewer.layers.save(str(path), selected=True, plugin="napari-ctseg") == [str(path)]
    assert pydicom.dcmread(path).Modality == "RTSTRUCT"
    maps = read_rtstruct(path, read_scan(dcm))
    back = np.zeros_like(layer.data)
    for m in maps:
        for s in m.segments:
            back[m.data == s.value] = {"right lung": 1, "left lung": 2}[s.name]
    assert np.array_equal(back, layer.data)
