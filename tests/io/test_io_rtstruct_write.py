"""RTSTRUCT written (io.dicom_objects.write_rtstruct, write_rois) and read back onto its CT.

The writer traces contours half-way between pixel centres, so our reader (which fills a pixel
when its centre is inside, even-odd) gives the mask back voxel for voxel: the tests ask for
that, and state what any reader that tests pixel centres gets (Dice >= 0.98, volume within 2 %,
holes kept). The patient coordinates are checked independently of our reader, against the
pixel centres computed from the CT files' own headers.
"""
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as PolygonPath
from scipy import ndimage
from synthetic import make_hu_volume, write_dicom_series, write_nifti

from napari_ctseg.errors import DicomObjectError
from napari_ctseg.io import read_scan
from napari_ctseg.io.dicom_objects import Roi, find_objects, read_object, read_rtstruct, write_rois, write_rtstruct
from napari_ctseg.training import read_mask

DCIODVFY = shutil.which("dciodvfy")


def _ct(folder, n=4, rows=40, cols=36, **kwargs):
    write_dicom_series(folder, make_hu_volume((cols, rows, n)).transpose(2, 1, 0), **kwargs)
    return read_scan(folder)


def _back(maps, names: dict[str, int], shape) -> np.ndarray:
    """The label mask the read maps hold, values by ROI name."""
    out = np.zeros(shape, np.uint8)
    for m in maps:
        for s in m.segments:
            out[m.data == s.value] = names[s.name]
    return out


def _holes(mask: np.ndarray) -> int:
    """Background pixels enclosed on their axial slice."""
    return sum(int(np.count_nonzero(ndimage.binary_fill_holes(s) & ~s)) for s in mask.astype(bool))


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _dciodvfy_errors(path):
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=300, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def _shapes(shape) -> np.ndarray:
    """Right lung with a hole holding an island, two left-lung pieces on a slice, pixels that touch
    only diagonally, a one-pixel ROI, ROIs touching the image's edge."""
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 5:30, 4:17] = 1
    mask[1, 10:16, 7:13] = 0  # a hole ...
    mask[1, 12:14, 9:11] = 1  # ... with an island in it
    mask[1, 4:12, 20:30] = 2
    mask[1, 20:28, 22:34] = 2
    mask[2, 6, 24] = mask[2, 7, 25] = mask[2, 8, 24] = 2  # diagonal neighbours
    mask[0, 0:8, 28:36] = 2  # the corner of the image
    mask[3, 33, 3] = 3  # one pixel
    return mask


NAMES = {1: "right_lung", 2: "left_lung", 3: "liver"}
READ_NAMES = {"right lung": 1, "left lung": 2, "liver": 3}


def test_round_trip_voxel_for_voxel_on_an_oblique_series(tmp_path):
    # Oblique slices, pixels 0.75 mm between rows and 0.8 mm between columns: a swapped axis shows.
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    ct = _ct(tmp_path / "ct", n=4, row_cos=(c, s, 0), col_cos=(-s, c, 0))
    mask = _shapes(ct.shape)
    out = write_rtstruct(mask, NAMES, ct, tmp_path / "rs.dcm", algorithm="napari-ctseg lungs v2")
    maps = read_rtstruct(out, ct)
    back = _back(maps, READ_NAMES, ct.shape)
    assert np.array_equal(back, mask)
    assert _holes(mask == 1) == 6 * 6 - 2 * 2 and _holes(back == 1) == _holes(mask == 1)
    ds = pydicom.dcmread(out)
    ref = ct.geometry.dicom
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == ref.study_uid and ds.SeriesInstanceUID != ref.series_uid
    (frame,) = ds.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == ref.frame_of_reference_uid == ds.FrameOfReferenceUID
    (series,) = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == ref.series_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == ref.sop_instance_uids
    rois = {r.ROINumber: r for r in ds.StructureSetROISequence}
    assert [r.ROIName for r in rois.values()] == ["right lung", "left lung", "liver"]
    assert {r.ROIGenerationAlgorithm for r in rois.values()} == {"AUTOMATIC"}
    assert rois[1].ROIGenerationDescription == "napari-ctseg lungs v2"
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN"] * 3
    colours = {s.name: s.color for m in maps for s in m.segments}
    assert colours["right lung"] == (0x4f, 0x9a, 0xe0)  # the lungs card's colour, as it is (RGB)
    # Several contours per slice: right lung slice 1 = outline, hole, island; left lung slice 1 = two.
    by_roi = {rc.ReferencedROINumber: rc.ContourSequence for rc in ds.ROIContourSequence}
    on_image = lambda number, k: [c for c in by_roi[number]  # noqa: E731
                                  if c.ContourImageSequence[0].ReferencedSOPInstanceUID == ref.sop_instance_uids[k]]
    k1 = _source_slice(ct, 1)
    assert len(on_image(1, k1)) == 3 and len(on_image(2, k1)) == 2
    assert all(c.ContourGeometricType == "CLOSED_PLANAR" for rc in by_roi.values() for c in rc)


def _source_slice(ct, z: int) -> int:
    """The source slice k (the series' k-th image) of display slice z."""
    on = np.zeros(ct.shape, bool)
    on[z] = True
    return int(np.flatnonzero(ct.geometry.to_source(on).any(axis=(0, 1)))[0])


def test_contours_lie_around_the_pixel_centres_in_patient_coordinates(tmp_path):
    """Independent of our reader: each contour's points in LPS mm, tested against the centres of
    the pixels of the image it references, computed from that file's own header."""
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    ct = _ct(tmp_path / "ct", n=4, row_cos=(c, 0, -s), col_cos=(0, 1, 0))
    mask = _shapes(ct.shape)
    out = write_rtstruct(mask, NAMES, ct, tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    headers = {str(h.SOPInstanceUID): h for h in (pydicom.dcmread(f, stop_before_pixels=True)
                                                   for f in ct.geometry.dicom.files)}
    source = ct.geometry.to_source(mask).transpose(2, 1, 0)  # (k, row, column)
    ref = ct.geometry.dicom
    for rc in ds.ROIContourSequence:
        value = int(rc.ReferencedROINumber)
        inside = {}
        for contour in rc.ContourSequence:
            uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
            h = headers[uid]
            iop = np.asarray(h.ImageOrientationPatient, float)
            origin, (dr, dc) = np.asarray(h.ImagePositionPatient, float), (float(v) for v in h.PixelSpacing)
            rows, cols = np.mgrid[: h.Rows, : h.Columns]
            centres = origin + np.outer(cols.ravel() * dc, iop[:3]) + np.outer(rows.ravel() * dr, iop[3:])
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            normal = np.cross(iop[:3], iop[3:])
            assert np.allclose((points - origin) @ normal, 0, atol=1e-3)  # on the image's plane
            # in-plane coordinates (mm along the row and column directions)
            uv = lambda p: np.column_stack([(p - origin) @ iop[:3], (p - origin) @ iop[3:]])  # noqa: E731
            hit = PolygonPath(uv(points)).contains_points(uv(centres)).reshape(h.Rows, h.Columns)
            inside[uid] = inside.get(uid, np.zeros_like(hit)) ^ hit
        for uid, got in inside.items():
            assert np.array_equal(got, source[ref.sop_instance_uids.index(uid)] == value)


def test_overlapping_rois_in_one_structure_set(tmp_path):
    ct = _ct(tmp_path / "ct", n=3)
    lungs = np.zeros(ct.shape, bool)
    lungs[:, 5:30, 4:30] = True
    infection = np.zeros(ct.shape, bool)
    infection[1, 10:20, 10:20] = True
    empty = np.zeros(ct.shape, bool)
    out = write_rois([Roi("lungs", lungs, "#ff0000", "napari-ctseg lungs v2", corrected=True),
                      Roi("infection", infection, (0, 255, 0), "napari-ctseg infection v3"),
                      Roi("liver", empty)], ct, tmp_path / "ct" / "RS1")
    maps = read_object(out, ct)  # by content, no extension
    assert [[s.name for s in m.segments] for m in maps] == [["lungs", "liver"], ["infection"]]
    assert np.array_equal(maps[0].data == 1, lungs) and not (maps[0].data == 2).any()
    assert np.array_equal(maps[1].data > 0, infection)
    assert [s.color for m in maps for s in m.segments] == [(255, 0, 0), (200, 120, 42), (0, 255, 0)]
    ds = pydicom.dcmread(out)
    assert [r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence] == ["SEMIAUTOMATIC", "AUTOMATIC", "MANUAL"]
    assert "ContourSequence" not in ds.ROIContourSequence[2]  # an empty ROI: no contours
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == ["ORGAN", "", "ORGAN"]
    (obj,) = find_objects(tmp_path / "ct")
    assert obj.kind == "RTSTRUCT" and obj.refers_to(ct.geometry.dicom)


def test_training_reads_an_rtstruct_back(tmp_path):
    ct = _ct(tmp_path / "ct", n=4)
    mask = _shapes(ct.shape)
    mask[mask == 3] = 0
    out = write_rtstruct(mask, {1: "right_lung", 2: "left_lung"}, ct, tmp_path / "lungs_rtstruct.dcm")
    assert np.array_equal(read_mask(out, ct, "lungs"), mask)


@pytest.mark.parametrize("what", ["RTSTRUCT", "DICOM SEG"])
def test_refusals(tmp_path, what):
    """Both DICOM writers refuse the same things, in one line that says what to do, and leave
    nothing behind (``seg.check_dicom_source`` is their one check)."""
    from napari_ctseg.io.dicom_objects import write_seg

    write = write_rtstruct if what == "RTSTRUCT" else write_seg
    nifti = read_scan(write_nifti(tmp_path / "ct.nii.gz", make_hu_volume((16, 16, 3)), np.eye(4)))
    with pytest.raises(DicomObjectError) as info:
        write(np.zeros(nifti.shape, np.uint8), {1: "liver"}, nifti, tmp_path / "rs.dcm")
    assert f"{what} needs the DICOM CT it was made from" in str(info.value) and "save as NIfTI" in str(info.value)
    no_frame = _ct(tmp_path / "noframe", n=3, frame_uid=False)
    with pytest.raises(DicomObjectError, match=f"no Frame of Reference UID, which {what} needs.*save as NIfTI"):
        write(np.zeros(no_frame.shape, np.uint8), {1: "liver"}, no_frame, tmp_path / "rs.dcm")
    ct = _ct(tmp_path / "ct", n=3)
    with pytest.raises(DicomObjectError, match="does not match"):
        write(np.zeros((2, 3, 4), np.uint8), {1: "liver"}, ct, tmp_path / "rs.dcm")
    with pytest.raises(DicomObjectError, match="non-integer"):
        write(np.full(ct.shape, 0.5), {1: "liver"}, ct, tmp_path / "rs.dcm")
    with pytest.raises(DicomObjectError, match="CT's own files"):
        write(np.zeros(ct.shape, np.uint8), {1: "liver"}, ct, ct.geometry.dicom.files[0])
    assert not (tmp_path / "rs.dcm").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_written_rtstruct_passes_dciodvfy(tmp_path):
    ct = _ct(tmp_path / "ct", n=4)
    out = write_rtstruct(_shapes(ct.shape), {**NAMES, 4: "infection"}, ct, tmp_path / "rs.dcm",
                         algorithm="napari-ctseg lungs v2", corrected=True)
    assert _dciodvfy_errors(out) == []


# --------------------------------------------------------------------------------------------- real series


def test_round_trip_on_the_lung_pet_ct_dx_chest(shared_data, tmp_path):
    """Lung-PET-CT-Dx A0001 (64 slices 512x512, 0.84 x 0.84 x 5 mm): the air inside the body
    (lungs and airways, vessels as holes), split into two ROIs."""
    folder = shared_data / "chest_lungdx_a0001" / "dicom"
    if not folder.is_dir():
        pytest.skip("chest_lungdx_a0001 is not in ../shared/data")
    ct = read_scan(folder)
    air, _ = ndimage.label(ct.hu < -400)
    outside = np.unique(np.concatenate([air[:, [0, -1], :].ravel(), air[:, :, [0, -1]].ravel()]))
    mask = (np.isin(air, outside, invert=True) & (air > 0)).astype(np.uint8)
    mask[:, :, ct.shape[2] // 2:] *= 2  # the patient's left half as label 2
    assert np.count_nonzero(mask) > 1e6 and _holes(mask > 0) > 1000
    out = write_rtstruct(mask, {1: "right_lung", 2: "left_lung"}, ct, tmp_path / "lungs_rtstruct.dcm",
                         algorithm="napari-ctseg lungs v2")
    back = _back(read_rtstruct(out, ct), READ_NAMES, ct.shape)
    for value in (1, 2):
        a, b = mask == value, back == value
        assert _dice(a, b) >= 0.98
        assert abs(np.count_nonzero(b) - np.count_nonzero(a)) <= 0.02 * np.count_nonzero(a)
        assert _holes(b) == _holes(a)
    assert np.array_equal(back, mask)  # in fact voxel for voxel
    if DCIODVFY is not None:
        assert _dciodvfy_errors(out) == []


def test_round_trip_on_the_dcmqi_liver(shared_data, tmp_path):
    folder = shared_data / "liver_dcmqi_3slice" / "dicom"
    if not folder.is_dir():
        pytest.skip("liver_dcmqi_3slice is not in ../shared/data")
    import nibabel as nib

    ct = read_scan(folder)
    liver = nib.load(shared_data / "liver_dcmqi_3slice" / "liver.nii.gz")
    mask = ct.geometry.to_display((np.asanyarray(liver.dataobj) > 0).astype(np.uint8))
    assert mask.any()
    out = write_rtstruct(mask, {1: "liver"}, ct, tmp_path / "liver_rtstruct.dcm")
    (labelmap,) = read_rtstruct(out, ct)
    assert labelmap.segments[0].name == "liver" and np.array_equal(labelmap.data, mask)


def test_rtutils_structure_set_written_again(shared_data, tmp_path):
    """rt-utils' own RTSTRUCT on its two-slice CT, read, written by us and read again: the same ROI."""
    folder = shared_data / "dicom_objects" / "rt-utils"
    if not folder.is_dir():
        pytest.skip("dicom_objects/rt-utils is not in ../shared/data")
    ct = read_scan(folder)
    (theirs,) = read_rtstruct(folder / "rt.dcm", ct)
    (roi,) = theirs.segments
    out = write_rtstruct(theirs.data, {roi.value: roi.name}, ct, tmp_path / "rs.dcm", colours={roi.value: roi.color})
    (ours,) = read_rtstruct(out, ct)
    assert (ours.segments[0].name, ours.segments[0].color) == ("ROI-1", (162, 136, 95))
    assert np.array_equal(ours.data, theirs.data) and theirs.data.any()


def test_fill_polygon_matches_scikit_image():
    """The reader's scanline fill gives scikit-image's pixels (centres inside), on random polygons
    that pass through no pixel centre, concave and self-touching ones included."""
    from skimage.draw import polygon2mask

    from napari_ctseg.io.dicom_objects.rtstruct import fill_polygon

    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(3, 30))
        poly = rng.uniform(-5, 45, (n, 2)) + 0.37  # off the whole numbers
        assert np.array_equal(fill_polygon((40, 40), poly), polygon2mask((40, 40), poly))
    # vertices on pixel centres (as many planning systems write them): the edges' centres are inside
    for poly in ([[1, 1], [1, 30], [20, 30], [20, 1]], [[2, 2], [10, 18], [30, 4], [16, 9]],
                 [[5, 5], [5, 35], [35, 35], [35, 5], [20, 20]]):
        poly = np.asarray(poly, float)
        assert np.array_equal(fill_polygon((40, 40), poly), polygon2mask((40, 40), poly)), poly.tolist()
