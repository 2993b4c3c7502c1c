"""DICOM SEG and RTSTRUCT through napari: opened as Labels layers on their CT, saved as DICOM SEG."""
import nibabel as nib
import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from synthetic import make_hu_volume, write_dicom_series, write_nifti

from napari_ctseg.io import read_scan
from napari_ctseg.io.dicom_objects import read_seg, write_seg

pytest.importorskip("highdicom")


@pytest.fixture
def notifications():
    start = len(notification_manager.records)
    return lambda: notification_manager.records[start:]


@pytest.fixture
def highdicom_folder(shared_data):
    # skipped at set-up, before the viewer fixture: a skip inside a viewer test breaks napari's teardown
    folder = shared_data / "dicom_objects" / "highdicom"
    if not folder.is_dir():
        pytest.skip("dicom_objects/highdicom is not in ../shared/data")
    return folder


def test_highdicom_folder_opens_image_and_labels(highdicom_folder, make_napari_viewer, notifications):
    folder = highdicom_folder
    viewer = make_napari_viewer()
    viewer.open(folder, plugin="napari-ctseg")
    kinds = [type(layer).__name__ for layer in viewer.layers]
    assert kinds == ["Image", "Labels"]
    image, labels = viewer.layers
    assert labels.name == "first segment" and labels.data.shape == image.data.shape
    assert np.count_nonzero(labels.data) > 0
    assert np.allclose(labels.scale, image.scale) and np.allclose(labels.translate, image.translate)
    assert labels.metadata["ctseg"]["affine"] == image.metadata["ctseg"]["affine"]
    assert labels.metadata["ctseg_dicom_object"]["kind"] == "SEG"
    assert any("4 SEG for another series" in n.message for n in notifications())


def test_labels_saved_as_seg_and_nifti_land_alike(make_napari_viewer, tmp_path, notifications):
    folder = tmp_path / "series"
    write_dicom_series(folder, make_hu_volume((30, 28, 5)).transpose(2, 1, 0))
    viewer = make_napari_viewer()
    image = viewer.open(folder, plugin="napari-ctseg")[0]
    mask = np.zeros(image.data.shape, np.uint8)
    mask[1:4, 5:20, 3:12] = 1
    mask[2:5, 6:18, 15:25] = 2
    labels = viewer.add_labels(mask, name="lungs", metadata={**image.metadata, "target": "lungs",
                                                            "model_version": "v2"},
                               scale=image.scale, translate=image.translate)
    import pandas as pd

    labels.features = pd.DataFrame({"name": ["background", "right lung", "left lung"]})
    viewer.layers.selection = {labels}
    seg_path, nii_path = tmp_path / "lungs.dcm", tmp_path / "lungs.nii.gz"
    assert viewer.layers.save(str(seg_path), selected=True, plugin="napari-ctseg") == [str(seg_path)]
    assert viewer.layers.save(str(nii_path), selected=True, plugin="napari-ctseg") == [str(nii_path)]
    ct = read_scan(folder)
    (labelmap,) = read_seg(seg_path, ct)
    assert {s.value: s.name for s in labelmap.segments} == {1: "right lung", 2: "left lung"}
    assert labelmap.segments[0].algorithm == "AUTOMATIC napari-ctseg lungs v2"
    nifti = ct.geometry.to_display(np.asanyarray(nib.load(nii_path).dataobj))
    assert np.array_equal(labelmap.data, nifti) and np.array_equal(nifti, mask)
    # Opened with its series, the SEG is a Labels layer on the same voxels.
    seg_path.rename(folder / "lungs.dcm")
    viewer2 = make_napari_viewer()
    viewer2.open(folder, plugin="napari-ctseg")
    assert [layer.name for layer in viewer2.layers][1:] == ["right lung, left lung"]
    assert np.array_equal(viewer2.layers[1].data, mask)


def test_seg_alone_without_its_series_is_a_message(make_napari_viewer, tmp_path, notifications):
    folder = tmp_path / "series"
    write_dicom_series(folder, make_hu_volume((20, 22, 3)).transpose(2, 1, 0))
    ct = read_scan(folder)
    alone = tmp_path / "alone"
    seg = write_seg(np.ones(ct.shape, np.uint8), {1: "liver"}, ct, alone / "liver.dcm")
    viewer = make_napari_viewer()
    viewer.open(seg, plugin="napari-ctseg")
    assert len(viewer.layers) == 0
    errors = [n.message for n in notifications() if n.severity == NotificationSeverity.ERROR]
    assert errors and ct.geometry.dicom.series_uid in errors[-1] and "\n" not in errors[-1]
    # Beside its series, the SEG alone opens both.
    seg.rename(folder / "liver.dcm")
    viewer.open(folder / "liver.dcm", plugin="napari-ctseg")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]


def test_seg_writer_refuses_a_nifti_scan(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    image = viewer.open(write_nifti(tmp_path / "ct.nii.gz", make_hu_volume((16, 18, 4)), np.eye(4)),
                        plugin="napari-ctseg")[0]
    labels = viewer.add_labels(np.ones(image.data.shape, np.uint8), metadata=image.metadata)
    viewer.layers.selection = {labels}
    viewer.layers.save(str(tmp_path / "mask.dcm"), selected=True, plugin="napari-ctseg")
    assert not (tmp_path / "mask.dcm").exists()
    assert any("DICOM SEG needs the DICOM CT" in n.message for n in notifications())
