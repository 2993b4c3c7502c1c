"""DICOM series written by the tests: ordering, HU, geometry against SimpleITK, compression."""
import nibabel as nib
import numpy as np
import pydicom
import pytest
from synthetic import make_hu_volume, sitk_series_as_nifti, write_dicom_series, write_structured_report

from napari_ctseg.io import read_scan, write_mask
from napari_ctseg.io.dicom import is_dicom_file, list_series


def _slices(n=12, rows=40, cols=36, seed=0):
    vol = make_hu_volume((cols, rows, n), seed=seed)  # (i=col, j=row, k=slice)
    return np.ascontiguousarray(vol.transpose(2, 1, 0))  # (slice, row, col)


@pytest.mark.parametrize("orientation", [
    dict(row_cos=(1, 0, 0), col_cos=(0, 1, 0)),          # axial, head-first supine
    dict(row_cos=(-1, 0, 0), col_cos=(0, 1, 0)),         # axial, flipped rows (feet-first)
    dict(row_cos=(1, 0, 0), col_cos=(0, 0, -1)),         # coronal acquisition
    dict(row_cos=(0.9848078, 0.1736482, 0), col_cos=(-0.1736482, 0.9848078, 0)),  # oblique 10 deg
])
def test_geometry_matches_simpleitk(tmp_path, orientation):
    slices = _slices()
    folder = tmp_path / "series"
    write_dicom_series(folder, slices, **orientation)
    volume = read_scan(folder)
    ref = sitk_series_as_nifti(folder, tmp_path / "ref.nii.gz")
    assert np.allclose(volume.geometry.affine, ref.affine, atol=1e-4)
    assert np.array_equal(volume.geometry.to_source(volume.hu), np.asanyarray(ref.dataobj))
    assert sorted(volume.spacing) == pytest.approx(sorted((2.5, 0.75, 0.8)), abs=1e-5)


def test_order_by_position_not_name_or_instance_number(tmp_path):
    slices = _slices(n=10)
    # Positions along the normal deliberately out of file/InstanceNumber order.
    order = [3, 0, 7, 1, 9, 2, 8, 4, 6, 5]
    positions = [2.5 * o for o in order]
    write_dicom_series(tmp_path, slices, positions=positions, shuffle=True)
    volume = read_scan(tmp_path)
    src = volume.geometry.to_source(volume.hu)  # (col, row, slice) by increasing position
    for rank, k in enumerate(np.argsort(positions)):
        assert np.array_equal(src[:, :, rank], slices[k].T)


def test_hu_rescale_applied_per_slice(tmp_path):
    slices = _slices(n=4)
    write_dicom_series(tmp_path / "a", slices[:2], intercept=-1024, prefix="A", series_uid="1.2.3.4")
    write_dicom_series(tmp_path / "a", slices[2:], intercept=-2048, slope=1, prefix="B", series_uid="1.2.3.4",
                       origin=(-100.0, -120.0, -50.0 + 2 * 2.5))
    volume = read_scan(tmp_path / "a")
    src = volume.geometry.to_source(volume.hu)
    assert np.array_equal(src.transpose(2, 1, 0), slices)


def test_files_without_extension_and_other_files(tmp_path):
    slices = _slices(n=5)
    write_dicom_series(tmp_path, slices, extension="")
    (tmp_path / "README.txt").write_text("exported by a PACS")
    (tmp_path / "thumbs.db").write_bytes(b"\x00\x01garbage")
    write_structured_report(tmp_path / "report")
    assert is_dicom_file(next(tmp_path.glob("IM*")))
    volume = read_scan(tmp_path)
    assert volume.shape == (5, 40, 36)
    # A single file opens its whole series.
    one = read_scan(next(tmp_path.glob("IM*")))
    assert np.array_equal(one.hu, volume.hu)


def test_two_series_opens_largest_ct_and_lists_other(tmp_path):
    write_dicom_series(tmp_path, _slices(n=8), description="big", prefix="B")
    write_dicom_series(tmp_path, _slices(n=3, seed=2), description="scout", prefix="S")
    write_dicom_series(tmp_path, _slices(n=20, seed=3), description="mr", modality="MR", prefix="M")
    volume = read_scan(tmp_path)
    assert volume.series.description == "big" and volume.shape[0] == 8
    assert {s.description for s in volume.other_series} == {"scout", "mr"}
    assert [s.n_slices for s in list_series(tmp_path)] == [20, 8, 3]


def test_missing_frame_of_reference_is_fine(tmp_path):
    write_dicom_series(tmp_path, _slices(n=4), frame_uid=False)
    assert read_scan(tmp_path).shape == (4, 40, 36)


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless,
                                    pydicom.uid.JPEGLosslessSV1])
def test_compressed_series(tmp_path, syntax):
    slices = _slices(n=4)
    write_dicom_series(tmp_path / "c", slices, transfer_syntax=syntax)
    assert pydicom.dcmread(next((tmp_path / "c").iterdir())).file_meta.TransferSyntaxUID == syntax
    volume = read_scan(tmp_path / "c")
    assert np.array_equal(volume.geometry.to_source(volume.hu).transpose(2, 1, 0), slices)


def test_gantry_tilt_warns_and_keeps_geometry(tmp_path):
    slices = _slices(n=6)
    files = write_dicom_series(tmp_path, slices, tilt_deg=15, shuffle=False)
    volume = read_scan(tmp_path)
    assert any("tilt" in w for w in volume.warnings)
    # Every slice's first voxel lands exactly on its ImagePositionPatient.
    for k, f in enumerate(files):
        ipp = np.array([float(v) for v in pydicom.dcmread(f).ImagePositionPatient])
        ras = volume.geometry.affine @ np.array([0, 0, k, 1.0])
        assert np.allclose(ras[:3], ipp * [-1, -1, 1], atol=1e-4)


def test_missing_slice_and_uneven_spacing_warn(tmp_path):
    slices = _slices(n=6)
    write_dicom_series(tmp_path / "gap", slices, positions=[0, 2.5, 5, 10, 12.5, 15])
    assert any("missing" in w for w in read_scan(tmp_path / "gap").warnings)
    write_dicom_series(tmp_path / "uneven", slices, positions=[0, 2.5, 5.5, 8, 10.5, 13.5])
    assert any("uneven" in w for w in read_scan(tmp_path / "uneven").warnings)


def test_mixed_series_keeps_largest_consistent_part(tmp_path):
    write_dicom_series(tmp_path, _slices(n=6), series_uid="1.2.3", prefix="A")
    write_dicom_series(tmp_path, _slices(n=2, rows=30, cols=30), series_uid="1.2.3", prefix="B",
                       origin=(-100.0, -120.0, 100.0))
    volume = read_scan(tmp_path)
    assert volume.shape == (6, 40, 36)
    assert any("mixes" in w for w in volume.warnings)


def test_real_dicom_matches_its_nifti(shared_data, tmp_path):
    case = shared_data / "liver_dcmqi_3slice"
    dicom = read_scan(case / "dicom")
    nifti = read_scan(case / "ct.nii.gz")
    assert np.array_equal(dicom.hu, nifti.hu)
    assert np.allclose(dicom.geometry.affine, nifti.geometry.affine, atol=1e-4)
    assert dicom.spacing == pytest.approx(nifti.spacing, abs=1e-5)
    # A mask written for the DICOM series lands on the NIfTI conversion's voxels.
    mask = (dicom.hu > 100).astype(np.uint8)
    out = nib.load(write_mask(tmp_path / "m.nii.gz", mask, dicom.geometry))
    ref = nib.load(case / "ct.nii.gz")
    assert out.shape == ref.shape
    assert np.allclose(out.affine, ref.affine, atol=1e-4)
    assert np.array_equal(np.asanyarray(out.dataobj), (np.asanyarray(ref.dataobj) > 100).astype(np.uint8))
