import json
import subprocess
import sys

import numpy as np
from synthetic import make_hu_volume, write_dicom_series, write_nifti

from napari_ctseg.cli import main


def test_info_nifti(tmp_path, capsys):
    path = write_nifti(tmp_path / "scan.nii.gz", make_hu_volume((30, 26, 9)),
                       np.diag([-0.7, -0.8, 2.5, 1.0]))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "30x26x9" in out and "LPS" in out and "2.5 x 0.8 x 0.7 mm" in out
    assert "-1005 .." in out or "HU range" in out


def test_info_dicom_json_lists_series(tmp_path, capsys):
    slices = make_hu_volume((36, 40, 6)).transpose(2, 1, 0)
    write_dicom_series(tmp_path, slices, description="chest", prefix="A")
    write_dicom_series(tmp_path, slices[:2], description="scout", prefix="B")
    assert main(["info", "--json", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "dicom"
    assert info["source_shape"] == [36, 40, 6]
    assert "chest" in info["series"] and "scout" in info["other_series"][0]


def test_bad_input_one_line_nonzero_exit(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    proc = subprocess.run([sys.executable, "-m", "napari_ctseg.cli", "info", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0
    assert "broken.nii.gz" in proc.stderr and "Traceback" not in proc.stderr


def test_segment_nifti_and_dicom(tmp_path, tiny_weights):
    import nibabel as nib

    data = make_hu_volume((36, 40, 6))
    nii = write_nifti(tmp_path / "scan.nii.gz", data, np.diag([-0.8, -0.8, 2.5, 1.0]))
    out = tmp_path / "out"
    assert main(["segment", str(nii), "--targets", "lungs,liver,infection", "--out", str(out),
                 "--device", "cpu", "--json"]) == 0
    for t in ("lungs", "liver", "infection"):
        img = nib.load(out / f"{t}.nii.gz")
        assert img.shape == data.shape and np.array_equal(img.affine, nib.load(nii).affine)
    dcm = tmp_path / "dicom"
    write_dicom_series(dcm, data.transpose(2, 1, 0))
    assert main(["segment", str(dcm), "--targets", "liver", "--out", str(tmp_path / "o2"), "--device", "cpu"]) == 0
    assert nib.load(tmp_path / "o2" / "liver.nii.gz").shape == data.shape


def test_segment_several_scans_one_folder_each(tmp_path, tiny_weights):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        write_nifti(scans / f"{name}.nii.gz", make_hu_volume((20, 22, 4)), np.eye(4))
    assert main(["segment", str(scans), "--targets", "liver", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert (tmp_path / "o" / "a" / "liver.nii.gz").is_file() and (tmp_path / "o" / "b" / "liver.nii.gz").is_file()


def test_segment_bad_input_one_line(tmp_path):
    bad = tmp_path / "x.nii.gz"
    bad.write_text("no")
    proc = subprocess.run([sys.executable, "-m", "napari_ctseg.cli", "segment", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "x.nii.gz" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import pytest

    scan = write_nifti(tmp_path / "ct.nii.gz", make_hu_volume((20, 20, 6)), np.eye(4))

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("napari_ctseg.io.read_scan", broken)
    assert main(["info", str(scan)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: boom second line" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "info", str(scan)])
    with pytest.raises(RuntimeError, match="boom"):
        main(["info", str(scan), "--debug"])


def test_malformed_dicom_through_the_cli_is_one_line(tmp_path):
    import pydicom

    files = write_dicom_series(tmp_path / "dcm", make_hu_volume((16, 16, 4)).transpose(2, 1, 0))
    for f in files:
        ds = pydicom.dcmread(f)
        del ds["PixelSpacing"]
        ds.add_new("PixelSpacing", "LO", "0,7\\0,7")  # a decimal comma
        ds.save_as(f)
    r = subprocess.run([sys.executable, "-m", "napari_ctseg.cli", "info", str(tmp_path / "dcm")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "napari_ctseg.cli", "info", str(tmp_path / "dcm"), "--debug"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr
