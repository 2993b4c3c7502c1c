"""ctseg segment --format seg: DICOM SEG beside a DICOM scan; a one-line refusal for NIfTI."""
import numpy as np
import pydicom
import pytest
from synthetic import make_hu_volume, write_dicom_series, write_nifti

from napari_ctseg.cli import main
from napari_ctseg.io import read_scan
from napari_ctseg.io.dicom_objects import read_seg

pytest.importorskip("highdicom")


def test_segment_writes_seg_for_dicom(tmp_path, tiny_weights):
    dcm = tmp_path / "dicom"
    write_dicom_series(dcm, make_hu_volume((36, 40, 6)).transpose(2, 1, 0))
    out = tmp_path / "out"
    assert main(["segment", str(dcm), "--targets", "lungs,liver", "--out", str(out), "--device", "cpu",
                 "--format", "seg"]) == 0
    ct = read_scan(dcm)
    for target, names in (("lungs", {"right lung", "left lung"}), ("liver", {"liver"})):
        path = out / f"{target}.dcm"
        ds = pydicom.dcmread(path)
        assert ds.Modality == "SEG" and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.geometry.dicom.series_uid
        algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (f"napari-ctseg {target}", "t1")
        maps = read_seg(path, ct)
        assert {s.name for m in maps for s in m.segments} == names
    assert not list(out.glob("*.nii.gz"))


def test_segment_seg_of_nifti_is_one_line(tmp_path, capsys):
    nii = write_nifti(tmp_path / "scan.nii.gz", make_hu_volume((20, 22, 4)), np.eye(4))
    assert main(["segment", str(nii), "--out", str(tmp_path / "o"), "--format", "seg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DICOM SEG needs the DICOM CT" in err and "NIfTI" in err
    assert not (tmp_path / "o").exists()
