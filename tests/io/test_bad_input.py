"""The bad-input corpus: each case gives a clear error or opens with a warning; nothing is written."""
import gzip

import nibabel as nib
import numpy as np
import pytest
from synthetic import make_hu_volume, write_dicom_series, write_nifti, write_structured_report

from napari_ctseg.errors import NotAScanError, ScanReadError, ScanTooLargeError
from napari_ctseg.io import read_scan


def _corpus_file(tmp_path, kind):
    """Files that must be refused with a message (the message must name the file)."""
    good = write_nifti(tmp_path / "good.nii.gz", make_hu_volume((20, 20, 6)), np.eye(4))
    raw = good.read_bytes()
    if kind == "corrupt gzip":
        p = tmp_path / "corrupt.nii.gz"
        p.write_bytes(raw[:10] + bytes(b ^ 0x5A for b in raw[10:60]) + raw[60:])
    elif kind == "truncated .nii.gz":
        p = tmp_path / "truncated.nii.gz"
        p.write_bytes(raw[: len(raw) // 2])
    elif kind == "truncated .nii":
        p = tmp_path / "truncated.nii"
        p.write_bytes(gzip.decompress(raw)[:1000])
    elif kind == "non-image named .nii.gz":
        p = tmp_path / "notes.nii.gz"
        p.write_text("this is not an image")
    elif kind == "empty file":
        p = tmp_path / "empty.nii"
        p.write_bytes(b"")
    elif kind == "text file":
        p = tmp_path / "notes.txt"
        p.write_text("hello")
    elif kind == "empty folder":
        p = tmp_path / "empty_folder"
        p.mkdir()
    elif kind == "folder of non-DICOM files":
        p = tmp_path / "docs"
        p.mkdir()
        (p / "a.txt").write_text("a")
    elif kind == "folder with no image DICOM":
        p = tmp_path / "sr_only"
        p.mkdir()
        write_structured_report(p / "report.dcm")
        write_structured_report(p / "DICOMDIR")
    good.unlink()
    return p


BAD = ["corrupt gzip", "truncated .nii.gz", "truncated .nii", "non-image named .nii.gz", "empty file",
       "text file", "empty folder", "folder of non-DICOM files", "folder with no image DICOM"]


@pytest.mark.parametrize("kind", BAD)
def test_refused_with_clear_message(tmp_path, kind):
    path = _corpus_file(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ScanReadError) as info:
        read_scan(path)
    message = str(info.value)
    assert path.name in message
    assert "\n" not in message and "Traceback" not in message
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_too_large_is_estimated_before_loading(tmp_path, monkeypatch):
    # A header that claims 512x512x4000 int16 voxels over a tiny file: refused before reading.
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((512, 512, 4000))
    hdr.set_data_dtype(np.int16)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as fh:
        hdr.write_to(fh)
        fh.write(b"\0" * 4)
    monkeypatch.setenv("CTSEG_MEMORY_LIMIT", str(1 << 30))
    with pytest.raises(ScanTooLargeError, match=r"huge.nii: the volume is 512x512x4000 voxels \(2.0 GiB"):
        read_scan(path)


def test_too_large_dicom(tmp_path, monkeypatch):
    write_dicom_series(tmp_path, np.zeros((3, 40, 36), np.int16))
    monkeypatch.setenv("CTSEG_MEMORY_LIMIT", "1000")
    with pytest.raises(ScanTooLargeError, match="36x40x3"):
        read_scan(tmp_path)


def test_4d_singleton_squeezed(tmp_path):
    data = make_hu_volume((10, 12, 5))[..., np.newaxis]
    v = read_scan(write_nifti(tmp_path / "s.nii.gz", data, np.eye(4)))
    assert v.shape == (5, 12, 10) and v.warnings == []


def test_4d_series_shows_first_volume_and_says_so(tmp_path):
    data = np.stack([make_hu_volume((10, 12, 5), seed=s) for s in range(3)], axis=-1)
    v = read_scan(write_nifti(tmp_path / "s.nii.gz", data, np.eye(4)))
    assert np.array_equal(v.geometry.to_source(v.hu), data[..., 0])
    assert any("3 volumes" in w and "first" in w for w in v.warnings)


def test_2d_image_is_one_slice_volume(tmp_path):
    data = make_hu_volume((10, 12, 1))[..., 0]
    v = read_scan(write_nifti(tmp_path / "s.nii.gz", data, np.eye(4)))
    assert v.shape == (1, 12, 10)


def test_nan_and_inf_replaced_with_warning(tmp_path):
    data = make_hu_volume((10, 12, 5)).astype(np.float32)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.inf, -np.inf
    path = write_nifti(tmp_path / "s.nii.gz", data, np.eye(4))
    before = path.read_bytes()
    v = read_scan(path)
    assert np.isfinite(v.hu).all()
    assert any("3 voxel(s) were NaN or infinite" in w for w in v.warnings)
    assert path.read_bytes() == before


@pytest.mark.parametrize("dtype,hi", [(np.uint16, 4095), (np.uint8, 255)])
def test_not_hu_opens_with_warning(tmp_path, dtype, hi):
    data = np.linspace(0, hi, 10 * 12 * 5).reshape(10, 12, 5).astype(dtype)
    v = read_scan(write_nifti(tmp_path / "s.nii.gz", data, np.eye(4)))
    assert any("segmentation expects HU" in w for w in v.warnings)


def test_dicom_without_rescale_warns_not_hu(tmp_path):
    write_dicom_series(tmp_path, np.full((3, 40, 36), 2000, np.int16) + np.arange(36, dtype=np.int16),
                       intercept=0)
    assert any("segmentation expects HU" in w for w in read_scan(tmp_path).warnings)


def test_oblique_nifti_warns(tmp_path):
    a = np.radians(20)
    affine = np.array([[1, 0, 0, 0], [0, np.cos(a), -np.sin(a), 0], [0, np.sin(a), np.cos(a), 0], [0, 0, 0, 1]])
    v = read_scan(write_nifti(tmp_path / "s.nii.gz", make_hu_volume((10, 12, 5)), affine))
    assert any("oblique" in w for w in v.warnings)


def _set_in_file(path, **values):
    """Rewrite DICOM values as raw strings (to make malformed files as exported by real devices)."""
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in values.items():
        if key in ds:
            del ds[key]
        ds.add_new(key, "LO", value)  # stored as text, as a broken exporter would
    ds.save_as(path)


def _non_image_object(path, modality, pixels=True, frames=3):
    """An RT Dose / SEG (pixel data, several frames) or RT Struct (none) DICOM object."""
    from synthetic import _base_dataset  # a CT slice's common header
    from pydicom.uid import generate_uid

    ds = _base_dataset(path, generate_uid(), generate_uid(), generate_uid(), modality, modality.lower())
    if pixels:
        ds.Rows, ds.Columns, ds.NumberOfFrames = 8, 8, frames
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.zeros((frames, 8, 8), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("kind", ["NumberOfFrames 1A", "PixelSpacing text", "RescaleSlope text"])
def test_malformed_dicom_value_is_one_line(tmp_path, kind):
    files = write_dicom_series(tmp_path / "series", make_hu_volume((16, 16, 4)).transpose(2, 1, 0))
    key = kind.split()[0]
    bad = {"NumberOfFrames": "1A", "PixelSpacing": "abc\\0.7", "RescaleSlope": "x1"}[key]
    for f in files:
        _set_in_file(f, **{key: bad})
    with pytest.raises(ScanReadError) as info:
        read_scan(tmp_path / "series")
    message = str(info.value)
    assert "series" in message and "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("modality,pixels", [("RTDOSE", True), ("SEG", True), ("RTSTRUCT", False), ("SR", False)])
def test_non_image_objects_are_named_not_opened(tmp_path, modality, pixels):
    folder = tmp_path / "export"
    folder.mkdir()
    _non_image_object(folder / "obj1", modality, pixels)
    with pytest.raises(NotAScanError) as info:
        read_scan(folder)
    message = str(info.value)
    assert f"1 {modality}" in message and "\n" not in message and "export" in message
    # beside a CT series, the CT opens and the object is mentioned
    write_dicom_series(folder, make_hu_volume((16, 16, 4)).transpose(2, 1, 0))
    vol = read_scan(folder)
    assert vol.shape == (4, 16, 16)
    assert any(modality in w for w in vol.warnings)


def test_multi_frame_ct_is_one_line(tmp_path):
    folder = tmp_path / "enhanced"
    folder.mkdir()
    _non_image_object(folder / "ct_mf", "CT", True, frames=5)
    with pytest.raises(ScanReadError) as info:
        read_scan(folder)
    assert "multi-frame" in str(info.value) and "\n" not in str(info.value)
