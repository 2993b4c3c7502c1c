"""ctseg segment --format rtstruct: one RT Structure Set with every target's ROIs beside a DICOM
scan; a one-line refusal for NIfTI; the parser's choice."""
import numpy as np
import pydicom
from synthetic import make_hu_volume, write_dicom_series, write_nifti

from napari_ctseg.cli import main
from napari_ctseg.cli.parser import build_parser
from napari_ctseg.io import read_scan
from napari_ctseg.io.dicom_objects import read_rtstruct


def test_parser_offers_rtstruct():
    parser = build_parser()
    assert parser.parse_args(["segment", "scan", "--out", "o", "--format", "rtstruct"]).format == "rtstruct"
    assert parser.parse_args(["cohort", "run", "scan", "--out", "o", "--format", "rtstruct"]).format == "rtstruct"


def test_segment_writes_one_rtstruct_for_dicom(tmp_path, tiny_weights):
    dcm = tmp_path / "dicom"
    write_dicom_series(dcm, make_hu_volume((36, 40, 6)).transpose(2, 1, 0))
    out = tmp_path / "out"
    assert main(["segment", str(dcm), "--targets", "lungs,liver", "--out", str(out), "--device", "cpu",
                 "--format", "rtstruct"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["rtstruct.dcm"]
    ct = read_scan(dcm)
    ds = pydicom.dcmread(out / "rtstruct.dcm")
    assert ds.Modality == "RTSTRUCT"
    assert ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0] \
        .SeriesInstanceUID == ct.geometry.dicom.series_uid
    rois = {r.ROIName: r for r in ds.StructureSetROISequence}
    assert set(rois) == {"right lung", "left lung", "liver"}
    assert rois["liver"].ROIGenerationDescription == "napari-ctseg liver t1"
    assert {s.name for m in read_rtstruct(out / "rtstruct.dcm", ct) for s in m.segments} == set(rois)
    # the same masks as --format nifti gives
    assert main(["segment", str(dcm), "--targets", "liver", "--out", str(tmp_path / "nii"), "--device", "cpu"]) == 0
    import nibabel as nib

    liver = ct.geometry.to_display(np.asanyarray(nib.load(tmp_path / "nii" / "liver.nii.gz").dataobj))
    maps = read_rtstruct(out / "rtstruct.dcm", ct)
    got = next(m.data == s.value for m in maps for s in m.segments if s.name == "liver")
    assert np.array_equal(got, liver == 1)


def test_segment_rtstruct_of_nifti_is_one_line(tmp_path, capsys):
    nii = write_nifti(tmp_path / "scan.nii.gz", make_hu_volume((20, 22, 4)), np.eye(4))
    assert main(["segment", str(nii), "--out", str(tmp_path / "o"), "--format", "rtstruct"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RTSTRUCT needs the DICOM CT" in err and "NIfTI" in err
    assert not (tmp_path / "o").exists()
