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
