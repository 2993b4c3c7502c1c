"""NIfTI read -> display -> write -> read is exact for any orientation."""
import nibabel as nib
import numpy as np
import pytest
from synthetic import make_hu_volume, write_nifti

from napari_ctseg.errors import MaskWriteError
from napari_ctseg.io import read_nifti, read_scan, write_mask
from napari_ctseg.io.volume import DISPLAY_AXCODES, Geometry


def _rot(deg_x, deg_y):
    ax, ay = np.radians(deg_x), np.radians(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return rx @ ry


def _affine(m, zooms, offset=(-90.5, 20.25, -300.0)):
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(m, float) @ np.diag(zooms)
    aff[:3, 3] = offset
    return aff


AFFINES = {
    "RAS": _affine(np.eye(3), (0.7, 0.8, 2.5)),
    "LPS": _affine(np.diag([-1, -1, 1]), (0.7, 0.8, 2.5)),
    "left-handed LAS": _affine(np.diag([-1, 1, 1]), (0.9, 0.9, 3.0)),
    "permuted PSR (slices first)": _affine([[0, 0, 1], [0, -1, 0], [-1, 0, 0]], (2.0, 0.6, 0.7)),
    "oblique": _affine(_rot(20, 10), (0.7, 0.8, 2.5)),
    "oblique left-handed": _affine(_rot(-15, 25) @ np.diag([1, -1, 1]), (1.0, 1.2, 1.5)),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_roundtrip_exact(tmp_path, name):
    affine = AFFINES[name]
    data = make_hu_volume((30, 26, 9), seed=1)
    src = write_nifti(tmp_path / "scan.nii.gz", data, affine)

    volume = read_nifti(src)
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.geometry.to_source(volume.hu), data)
    # Display axes point to I, P, L (nearest axes for oblique scans).
    assert tuple(nib.aff2axcodes(volume.geometry.display_affine)) == DISPLAY_AXCODES
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    assert sorted(volume.spacing) == pytest.approx(sorted(zooms), abs=1e-5)

    mask = (volume.hu > 500).astype(np.uint8) + (volume.hu == -850 + 0)  # labels 1 and maybe 2
    out = write_mask(tmp_path / "mask.nii.gz", mask, volume.geometry)
    back = nib.load(out)
    ref = nib.load(src)
    assert back.shape == ref.shape
    assert np.array_equal(back.affine, ref.affine)
    assert np.array_equal(back.header.get_qform(), ref.header.get_qform())
    assert np.array_equal(back.header.get_sform(), ref.header.get_sform())
    assert int(back.header["qform_code"]) == int(ref.header["qform_code"])
    assert int(back.header["sform_code"]) == int(ref.header["sform_code"])
    assert np.issubdtype(back.get_data_dtype(), np.integer)
    expected = (data > 500).astype(np.uint8) + (data == -850)
    assert np.array_equal(np.asanyarray(back.dataobj), expected)


def test_display_orientation_is_radiological(tmp_path):
    # A marker at the patient's right, anterior, superior corner in an LPS-stored scan.
    data = np.full((10, 12, 8), -1000, np.int16)
    affine = _affine(np.diag([-1, -1, 1]), (1.0, 1.0, 2.0))
    # LPS storage: i grows toward L, j toward P, k toward S. Right = i 0, anterior = j 0, superior = k 7.
    data[0, 0, 7] = 1000
    volume = read_nifti(write_nifti(tmp_path / "lps.nii", data, affine))
    z, y, x = np.argwhere(volume.hu == 1000)[0]
    assert (z, y, x) == (0, 0, 0)  # superior = top slice, anterior = top row, right = left column


def test_scaled_integer_nifti_stays_int16(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = write_nifti(tmp_path / "scaled.nii.gz", data, np.eye(4), slope=1.0, inter=-1024.0)
    volume = read_nifti(path)
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.geometry.to_source(volume.hu), data.astype(np.int32) - 1024)


def test_float_scaled_nifti_is_float32(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    path = write_nifti(tmp_path / "f.nii.gz", data, np.eye(4), slope=0.5, inter=-1000.0)
    volume = read_nifti(path)
    assert volume.hu.dtype == np.float32
    assert np.allclose(volume.geometry.to_source(volume.hu), data * 0.5 - 1000)


def test_real_sample_reads_in_hu(shared_data):
    volume = read_scan(shared_data / "sample" / "ct.nii.gz")
    lo, hi = volume.hu_range()
    assert lo <= -1000 and hi > 500
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert volume.warnings == []


def test_writer_refuses_source_and_wrong_shape(tmp_path):
    data = make_hu_volume((8, 9, 4))
    src = write_nifti(tmp_path / "scan.nii.gz", data, np.eye(4))
    before = src.read_bytes()
    volume = read_nifti(src)
    with pytest.raises(MaskWriteError, match="scan itself"):
        write_mask(src, np.zeros(volume.shape, np.uint8), volume.geometry)
    assert src.read_bytes() == before
    with pytest.raises(MaskWriteError, match="does not match"):
        write_mask(tmp_path / "m.nii.gz", np.zeros((3, 3, 3), np.uint8), volume.geometry)
    with pytest.raises(MaskWriteError, match="non-integer"):
        write_mask(tmp_path / "m.nii.gz", np.full(volume.shape, 0.5), volume.geometry)
    assert not (tmp_path / "m.nii.gz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]  # no temp files left


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    data = make_hu_volume((8, 9, 4))
    volume = read_nifti(write_nifti(tmp_path / "scan.nii.gz", data, np.eye(4)))
    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"previous mask")

    def boom(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", boom)
    with pytest.raises(MaskWriteError, match="could not write"):
        write_mask(target, np.zeros(volume.shape, np.uint8), volume.geometry)
    assert target.read_bytes() == b"previous mask"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz", "scan.nii.gz"]


def test_geometry_metadata_roundtrip(tmp_path):
    volume = read_nifti(write_nifti(tmp_path / "s.nii.gz", make_hu_volume((6, 7, 5)), AFFINES["oblique"]))
    again = Geometry.from_metadata(volume.geometry.to_metadata())
    assert np.array_equal(again.affine, volume.geometry.affine)
    assert again.display_shape == volume.shape
    assert again.nifti_header == volume.geometry.nifti_header


def test_large_labels_use_wider_integer(tmp_path):
    volume = read_nifti(write_nifti(tmp_path / "s.nii.gz", make_hu_volume((6, 7, 5)), np.eye(4)))
    mask = np.zeros(volume.shape, np.int32)
    mask[0, 0, 0] = 300
    back = nib.load(write_mask(tmp_path / "m.nii", mask, volume.geometry))
    assert back.get_data_dtype() == np.int16
    assert int(np.asanyarray(back.dataobj).max()) == 300


def test_mask_on_a_nifti2_scan_keeps_its_geometry(tmp_path):
    """A NIfTI-2 source: the mask is written on its geometry (once 'data code 0 not supported')."""
    import nibabel as nib

    from napari_ctseg.io import read_nifti, write_mask

    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 400, size=(12, 10, 6)).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 40.0], [0, 0.9, 0, -30.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    img = nib.Nifti2Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    src = tmp_path / "scan.nii.gz"
    nib.save(img, src)
    vol = read_nifti(src)
    mask = np.zeros(vol.shape, np.uint8)
    mask[1, 2, 3] = 1
    out = write_mask(tmp_path / "mask.nii.gz", mask, vol.geometry)
    back = nib.load(out)
    assert isinstance(back, nib.Nifti2Image)
    assert back.shape == data.shape and np.allclose(back.affine, affine)
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 1
    # The marked voxel lands where the display grid put it.
    assert np.array_equal(vol.geometry.to_display(np.asarray(back.dataobj)), mask)
