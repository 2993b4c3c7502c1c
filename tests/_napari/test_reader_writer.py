"""The plugin's reader, writer and sample through napari itself (npe2 and a real viewer)."""
import nibabel as nib
import npe2
import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from synthetic import make_hu_volume, write_dicom_series, write_nifti

from napari_ctseg.io import read_scan


@pytest.fixture
def notifications():
    start = len(notification_manager.records)

    def new():
        return notification_manager.records[start:]

    return new


def test_manifest_is_valid():
    manifest = npe2.PluginManifest.from_distribution("napari-ctseg")
    assert manifest.name == "napari-ctseg"
    assert {r.command for r in manifest.contributions.readers} == {"napari-ctseg.get_reader"}
    assert manifest.contributions.readers[0].accepts_directories


def test_npe2_reads_real_dicom_and_its_nifti_alike(shared_data):
    npe2.PluginManager.instance().discover(include_npe1=False)
    case = shared_data / "liver_dcmqi_3slice"
    (data_d, meta_d, kind_d), = npe2.read([str(case / "dicom")], stack=False, plugin_name="napari-ctseg")
    (data_n, meta_n, kind_n), = npe2.read([str(case / "ct.nii.gz")], stack=False, plugin_name="napari-ctseg")
    assert kind_d == kind_n == "image"
    assert np.array_equal(data_d, data_n)
    assert np.allclose(meta_d["scale"], meta_n["scale"], atol=1e-5)
    spacing = read_scan(case / "ct.nii.gz").spacing
    assert np.allclose(meta_n["scale"], spacing)
    assert data_n.min() <= -1000  # Hounsfield units


def test_open_in_viewer_gives_ct_image_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = write_nifti(tmp_path / "chest.nii.gz", make_hu_volume((30, 26, 9)), np.diag([0.7, 0.8, 2.5, 1]))
    layers = viewer.open(path, plugin="napari-ctseg")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.name == "chest"
    assert np.allclose(layer.scale, (2.5, 0.8, 0.7))
    assert layer.colormap.name == "gray"
    assert tuple(layer.contrast_limits) == (-135.0, 215.0)  # abdomen window L40/W350
    assert "ctseg" in layer.metadata


def test_dicom_folder_with_two_series_says_which(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    slices = make_hu_volume((36, 40, 6)).transpose(2, 1, 0)
    write_dicom_series(tmp_path, slices, description="chest", prefix="A")
    write_dicom_series(tmp_path, slices[:2], description="scout", prefix="B")
    viewer.open(tmp_path, plugin="napari-ctseg")
    assert viewer.layers[0].data.shape == (6, 40, 36)
    texts = [n.message for n in notifications()]
    assert any("chest" in t and "scout" in t for t in texts)


def test_bad_input_is_a_notification_not_a_traceback(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    viewer.open(bad, plugin="napari-ctseg")
    assert len(viewer.layers) == 0
    errors = [n for n in notifications() if n.severity == NotificationSeverity.ERROR]
    assert errors and "broken.nii.gz" in errors[-1].message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nii.gz"]


def test_warnings_shown_when_opening(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    data = np.linspace(0, 4095, 10 * 12 * 5).reshape(10, 12, 5).astype(np.uint16)
    viewer.open(write_nifti(tmp_path / "raw.nii.gz", data, np.eye(4)), plugin="napari-ctseg")
    assert len(viewer.layers) == 1
    assert any("expects HU" in n.message for n in notifications() if n.severity == NotificationSeverity.WARNING)


@pytest.mark.parametrize("with_metadata", [True, False])
def test_saved_labels_land_on_scan_geometry(make_napari_viewer, tmp_path, with_metadata):
    viewer = make_napari_viewer()
    a = np.radians(12)
    affine = np.array([[0, 0, 2.5, -40], [-0.8 * np.cos(a), 0.7 * np.sin(a), 0, 30],
                       [0.8 * np.sin(a), 0.7 * np.cos(a), 0, 12], [0, 0, 0, 1]])  # permuted, oblique
    data = make_hu_volume((26, 22, 9))
    src = write_nifti(tmp_path / "scan.nii.gz", data, affine, qform_code=1, sform_code=2)
    image = viewer.open(src, plugin="napari-ctseg")[0]
    kwargs = dict(scale=image.scale, translate=image.translate)
    if with_metadata:
        kwargs["metadata"] = image.metadata
    labels = viewer.add_labels(np.zeros(image.data.shape, np.int32), name="lungs", **kwargs)
    labels.data = (image.data == image.data).astype(np.int32) * (np.asarray(image.data) > 500)
    viewer.dims.order = (1, 0, 2)  # the display is reoriented: nothing changes on disk
    out = tmp_path / "mask.nii.gz"
    viewer.layers.selection = {labels}
    written = viewer.layers.save(str(out), selected=True, plugin="napari-ctseg")
    assert written == [str(out)]
    back, ref = nib.load(out), nib.load(src)
    assert back.shape == ref.shape
    assert np.array_equal(back.affine, ref.affine)
    assert np.array_equal(back.header.get_qform(), ref.header.get_qform())
    assert int(back.header["sform_code"]) == 2
    assert np.issubdtype(back.get_data_dtype(), np.integer)
    assert np.array_equal(np.asanyarray(back.dataobj), (data > 500).astype(np.uint8))


def test_writer_refuses_mismatched_layer(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    src = write_nifti(tmp_path / "scan.nii.gz", make_hu_volume((20, 22, 6)), np.eye(4))
    image = viewer.open(src, plugin="napari-ctseg")[0]
    labels = viewer.add_labels(np.zeros((3, 4, 5), np.uint8), metadata=image.metadata)
    viewer.layers.selection = {labels}
    viewer.layers.save(str(tmp_path / "m.nii.gz"), selected=True, plugin="napari-ctseg")
    assert not (tmp_path / "m.nii.gz").exists()
    assert any("does not match" in n.message for n in notifications())
    # Overwriting the scan itself is refused too.
    labels2 = viewer.add_labels(np.zeros(image.data.shape, np.uint8), metadata=image.metadata)
    viewer.layers.selection = {labels2}
    before = src.read_bytes()
    viewer.layers.save(str(src), selected=True, plugin="napari-ctseg")
    assert src.read_bytes() == before
    assert any("scan itself" in n.message for n in notifications())


def test_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-ctseg", "sample_ct")
    layer = viewer.layers[0]
    assert layer.data.shape == (30, 101, 122)
    assert np.allclose(layer.scale, (3, 3, 3))
    assert layer.data.min() <= -1000


def test_chest_sample_is_a_full_chest(make_napari_viewer):
    from napari_ctseg.training.labels.silver import airway_mask, silver_lung_labels

    viewer = make_napari_viewer()
    viewer.open_sample("napari-ctseg", "chest_ct")
    layer = viewer.layers[0]
    assert layer.data.shape == (64, 192, 192)
    assert np.allclose(layer.scale, (5.0, 2.245, 2.245), atol=0.01)
    assert tuple(layer.contrast_limits) == (-1200, 200)  # the lung window
    hu = np.asarray(layer.data)
    # Apex to base: a trachea at the top, both lungs, and lung-free upper abdomen at the bottom.
    assert airway_mask(hu, layer.scale).any()
    lungs = silver_lung_labels(hu, layer.scale)
    assert (lungs == 1).sum() * np.prod(layer.scale) / 1000 > 1500  # mL, right lung
    assert (lungs == 2).sum() * np.prod(layer.scale) / 1000 > 1000
    assert not lungs[-1].any() and not lungs[0].any()


def test_napari_opens_a_16_bit_tiff_slice_and_leaves_an_8_bit_one(make_napari_viewer, tmp_path):
    """File > Open on a 16-bit HU TIFF gives our Image layer with its spacing; an 8-bit TIFF (a
    mask, a screenshot) is not claimed by napari-ctseg."""
    import tifffile

    from napari_ctseg._napari.reader import napari_get_reader

    a = np.full((40, 50), -1000, np.int16)
    a[10:20, 10:30] = 40
    tifffile.imwrite(tmp_path / "slice.tif", a, resolution=(10 / 0.7, 10 / 0.7), resolutionunit=3)
    tifffile.imwrite(tmp_path / "mask.tif", (a > 0).astype(np.uint8) * 255)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(tmp_path / "slice.tif", plugin="napari-ctseg")
    assert layer.data.shape == (1, 40, 50) and tuple(layer.scale[-2:]) == pytest.approx((0.7, 0.7))
    assert np.array_equal(np.asarray(layer.data)[0], a)
    assert napari_get_reader(str(tmp_path / "mask.tif")) is None
