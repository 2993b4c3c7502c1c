"""DICOM SEG and RTSTRUCT read onto their CT, DICOM SEG written and read back (io.dicom_objects)."""
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from synthetic import make_hu_volume, write_dicom_series, write_nifti

from napari_ctseg.errors import CTSegError, DicomObjectError
from napari_ctseg.io import read_scan
from napari_ctseg.io.dicom_objects import (
    RTSTRUCT_SOP_CLASS,
    find_objects,
    open_with_objects,
    read_object,
    read_rtstruct,
    read_seg,
    write_seg,
)

hd = pytest.importorskip("highdicom")

# pydicom's own test files hold the small CT series (dicomdirtests/77654033/CT2) that highdicom's
# binary, fractional and overlapping SEGs were made from; ct_image.dcm is the single frame SEG's.
PYDICOM_CT2 = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "77654033" / "CT2"
SEGS_ON_CT2 = ["seg_image_ct_binary.dcm", "seg_image_ct_binary_fractional.dcm", "seg_image_ct_true_fractional.dcm",
               "seg_image_ct_binary_overlap.dcm"]


@pytest.fixture
def highdicom_dir(shared_data):
    folder = shared_data / "dicom_objects" / "highdicom"
    if not folder.is_dir():
        pytest.skip("dicom_objects/highdicom is not in ../shared/data")
    return folder


@pytest.fixture
def rtutils_dir(shared_data):
    folder = shared_data / "dicom_objects" / "rt-utils"
    if not folder.is_dir():
        pytest.skip("dicom_objects/rt-utils is not in ../shared/data")
    return folder


@pytest.fixture
def ct2(tmp_path):
    if not PYDICOM_CT2.is_dir():
        pytest.skip("pydicom's test files are not installed")
    folder = tmp_path / "ct2"
    shutil.copytree(PYDICOM_CT2, folder)
    return folder


def _expected(seg_path, ct):
    """Per segment, the display-grid mask highdicom itself reads from the file's pixel data."""
    seg = hd.seg.segread(seg_path)
    ref = ct.geometry.dicom
    raw = seg.get_pixels_by_source_instance(ref.sop_instance_uids, assert_missing_frames_are_empty=True,
                                            rescale_fractional=False)  # (slice k, row, column, segment)
    limit = int(seg.get("MaximumFractionalValue", 1) or 1)
    out = {}
    for i, number in enumerate(seg.segment_numbers):
        on = raw[..., i].astype(int) * 2 >= limit if limit > 1 else raw[..., i] > 0
        out[number] = ct.geometry.to_display(on.transpose(2, 1, 0))
    return out


@pytest.mark.parametrize("name", SEGS_ON_CT2)
def test_highdicom_segs_land_on_their_series(highdicom_dir, ct2, name):
    ct = read_scan(ct2)
    maps = read_seg(highdicom_dir / name, ct)
    expected = _expected(highdicom_dir / name, ct)
    got = {s.number: m.data == s.value for m in maps for s in m.segments}
    assert set(got) == set(expected)
    for number, mask in expected.items():
        assert mask.any()
        assert np.array_equal(got[number], mask)
    for m in maps:
        assert m.data.dtype == np.uint8 and m.data.shape == ct.shape and m.kind == "SEG"
        assert m.source_path == str((highdicom_dir / name).resolve())
    first = next(s for m in maps for s in m.segments if s.number == 1)
    assert first.name == "first segment"
    assert first.category["meaning"] == "Tissue" and first.type == {"scheme": "SCT", "value": "272673000",
                                                                     "meaning": "Bone"}
    # Overlapping segments go to separate maps; otherwise one multi-label map.
    overlap = np.logical_and.reduce(list(expected.values())).any() if len(expected) > 1 else False
    assert len(maps) == (len(expected) if overlap else 1)
    if "overlap" in name:
        assert overlap and [m.name for m in maps] == ["first segment", "second segment"]


def test_true_fractional_is_thresholded_at_half(highdicom_dir, ct2):
    ct = read_scan(ct2)
    seg = hd.seg.segread(highdicom_dir / "seg_image_ct_true_fractional.dcm")
    fractions = seg.get_pixels_by_source_instance(ct.geometry.dicom.sop_instance_uids,
                                                  assert_missing_frames_are_empty=True)[..., 0]
    assert 0 < np.count_nonzero((fractions > 0) & (fractions < 0.5))  # some values below the threshold
    (labelmap,) = read_seg(highdicom_dir / "seg_image_ct_true_fractional.dcm", ct)
    assert np.count_nonzero(labelmap.data) == np.count_nonzero(fractions >= 0.5)


def test_single_frame_seg_on_ct_image(highdicom_dir):
    ct = read_scan(highdicom_dir / "ct_image.dcm")
    (labelmap,) = read_seg(highdicom_dir / "seg_image_ct_binary_single_frame.dcm", ct)
    expected = _expected(highdicom_dir / "seg_image_ct_binary_single_frame.dcm", ct)[1]
    assert np.array_equal(labelmap.data == 1, expected) and expected.any()


@pytest.mark.parametrize("name", SEGS_ON_CT2)
def test_seg_for_another_series_names_it(highdicom_dir, name):
    ct = read_scan(highdicom_dir / "ct_image.dcm")
    wanted = str(pydicom.dcmread(highdicom_dir / name).ReferencedSeriesSequence[0].SeriesInstanceUID)
    with pytest.raises(DicomObjectError) as info:
        read_seg(highdicom_dir / name, ct)
    message = str(info.value)
    assert wanted in message and name in message and "\n" not in message


def test_seg_placed_by_position_without_references(highdicom_dir, tmp_path):
    ds = pydicom.dcmread(highdicom_dir / "seg_image_ct_binary_single_frame.dcm")
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
    del ds.ReferencedSeriesSequence
    ds.save_as(tmp_path / "by_position.dcm")
    ct = read_scan(highdicom_dir / "ct_image.dcm")
    (labelmap,) = read_seg(tmp_path / "by_position.dcm", ct)
    assert np.array_equal(labelmap.data == 1, _expected(highdicom_dir / "seg_image_ct_binary_single_frame.dcm", ct)[1])
    ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient[2] = -60.0
    ds.save_as(tmp_path / "off_slice.dcm")
    with pytest.raises(DicomObjectError, match=r"frame 1 at -60\.0 mm is not on a slice"):
        read_seg(tmp_path / "off_slice.dcm", ct)


def test_seg_frame_from_a_missing_image_names_it(highdicom_dir, ct2):
    victim = next(p for p in sorted(ct2.iterdir()) if pydicom.dcmread(p).SOPInstanceUID.endswith(".95"))
    missing = str(pydicom.dcmread(victim).SOPInstanceUID)
    victim.unlink()
    ct = read_scan(ct2)
    with pytest.raises(DicomObjectError) as info:
        read_seg(highdicom_dir / "seg_image_ct_binary.dcm", ct)
    assert missing in str(info.value) and "not in the CT series" in str(info.value)


# --------------------------------------------------------------------------------------------- RTSTRUCT


def test_rtutils_rtstruct_on_its_ct(rtutils_dir):
    ct = read_scan(rtutils_dir)
    (labelmap,) = read_rtstruct(rtutils_dir / "rt.dcm", ct)
    (roi,) = labelmap.segments
    assert (roi.name, roi.number, roi.color) == ("ROI-1", 1, (162, 136, 95))
    ds = pydicom.dcmread(rtutils_dir / "rt.dcm")
    contours = ds.ROIContourSequence[0].ContourSequence
    ref = ct.geometry.dicom
    on = {ref.sop_instance_uids.index(str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)) for c in contours}
    source = ct.geometry.to_source(labelmap.data)  # (column, row, slice k)
    for k in range(source.shape[2]):
        assert source[:, :, k].any() == (k in on)
    # Inside the contours (even-odd), pixel centres as matplotlib sees them, on the slice they are on.
    (k,) = on
    origin = np.asarray(ref.positions[k])
    rows, cols = np.mgrid[: ref.rows, : ref.columns]
    centres = np.column_stack([origin[0] + cols.ravel() * ref.pixel_spacing[1],
                               origin[1] + rows.ravel() * ref.pixel_spacing[0]])
    inside = np.zeros(ref.rows * ref.columns, bool)
    for c in contours:
        xy = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)[:, :2]
        inside ^= PolygonPath(xy).contains_points(centres)
    inside = inside.reshape(ref.rows, ref.columns)
    got = source[:, :, k].T > 0
    assert inside.sum() > 100
    # the same pixels, up to pixel centres that lie on an edge
    assert np.count_nonzero(got ^ inside) <= 0.05 * inside.sum()


@pytest.mark.parametrize("name", ["invalid_reference_rt.dcm", "non_existent_reference_rt.dcm"])
def test_rtutils_broken_references_name_the_missing_image(rtutils_dir, name):
    ct = read_scan(rtutils_dir)
    ds = pydicom.dcmread(rtutils_dir / name)
    known = set(ct.geometry.dicom.sop_instance_uids)
    missing = {str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
               for rc in ds.ROIContourSequence for c in rc.ContourSequence} - known
    with pytest.raises(DicomObjectError) as info:
        read_rtstruct(rtutils_dir / name, ct)
    message = str(info.value)
    assert any(uid in message for uid in missing) and name in message and "\n" not in message


def _ct_series(folder, n=4, rows=40, cols=36, **kwargs):
    write_dicom_series(folder, make_hu_volume((cols, rows, n)).transpose(2, 1, 0), **kwargs)
    return read_scan(folder)


def write_rtstruct(path, ct, rois, *, frame_uid=None, series_uid=None, with_images=True):
    """An RTSTRUCT on ``ct``: ``rois`` is [(name, colour, [(slice k, [(row, col), ...]), ...]), ...] in
    pixel coordinates of the CT's slices (written as LPS mm)."""
    ref = ct.geometry.dicom
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", ref.study_uid, generate_uid()
    ds.StructureSetLabel = "test"
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid or ref.frame_of_reference_uid
    study, series = Dataset(), Dataset()
    series.SeriesInstanceUID = series_uid or ref.series_uid
    series.ContourImageSequence = Sequence([_image(uid) for uid in ref.sop_instance_uids])
    study.RTReferencedSeriesSequence = Sequence([series])
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    iop = np.asarray(ref.orientation)
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(), Sequence()
    for number, (name, colour, contours) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame.FrameOfReferenceUID
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor = number, list(colour)
        rc.ContourSequence = Sequence()
        for k, points in contours:
            rc_points = np.asarray(points, float)
            lps = (np.asarray(ref.positions[k]) + np.outer(rc_points[:, 1] * ref.pixel_spacing[1], iop[:3])
                   + np.outer(rc_points[:, 0] * ref.pixel_spacing[0], iop[3:]))
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(lps)
            c.ContourData = [f"{v:.4f}" for v in lps.ravel()]
            if with_images:
                c.ContourImageSequence = Sequence([_image(ref.sop_instance_uids[k])])
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)
    return path


def _image(uid):
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = uid
    return item


def _square(r0, c0, r1, c1):
    return [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]


@pytest.mark.parametrize("with_images", [True, False])
def test_rtstruct_holes_several_rois_and_overlap(tmp_path, with_images):
    ct = _ct_series(tmp_path / "ct", n=4)
    ref = ct.geometry.dicom
    rois = [
        ("Body", (255, 255, 0), [(k, _square(1, 1, 38, 34)) for k in range(4)]),
        ("Lung R", (0, 0, 255), [(1, _square(5, 5, 20, 15)), (1, _square(9, 8, 15, 12)),  # a hole
                                 (2, _square(5, 5, 20, 15))]),
        ("Lung L", (0, 255, 0), [(1, _square(5, 20, 20, 30)), (1, _square(25, 20, 35, 30))]),  # two islands
        ("Empty", (9, 9, 9), []),
    ]
    path = write_rtstruct(tmp_path / "ct" / "RS0001", ct, rois, with_images=with_images)  # no extension
    maps = read_rtstruct(path, ct)
    # The body overlaps the lungs: the lungs go to a second map; the empty ROI overlaps nothing.
    assert [[s.name for s in m.segments] for m in maps] == [["Body", "Empty"], ["Lung R", "Lung L"]]
    assert maps[1].name == "Lung R, Lung L"
    assert [s.color for s in maps[1].segments] == [(0, 0, 255), (0, 255, 0)]
    lungs = ct.geometry.to_source(maps[1].data).transpose(2, 1, 0)  # (k, row, column) as the polygons
    right = lungs == 1
    assert right[1, 7, 7] and not right[1, 12, 10] and right[2, 12, 10]  # the hole on slice 1 only
    assert not right[0].any() and not right[3].any()
    assert lungs[1, 10, 25] == 2 and lungs[1, 30, 25] == 2 and lungs[1, 22, 25] == 0
    assert np.count_nonzero(ct.geometry.to_source(maps[0].data)) == 4 * 38 * 34
    (obj,) = find_objects(tmp_path / "ct")  # by content, among the CT's files
    assert obj.path == path and obj.kind == "RTSTRUCT" and obj.series_uids == [ref.series_uid] and obj.refers_to(ref)


def test_rtstruct_contour_off_the_slices_or_other_series(tmp_path):
    ct = _ct_series(tmp_path / "ct", n=3)
    ref = ct.geometry.dicom
    other = write_rtstruct(tmp_path / "other.dcm", ct, [("A", (1, 2, 3), [(0, _square(2, 2, 9, 9))])],
                           series_uid="1.2.3.4.5")
    with pytest.raises(DicomObjectError, match=r"for series 1\.2\.3\.4\.5, not the CT's series"):
        read_rtstruct(other, ct)
    # A contour placed by position half a slice away from any slice.
    path = write_rtstruct(tmp_path / "off.dcm", ct, [("A", (1, 2, 3), [(2, _square(2, 2, 9, 9))])], with_images=False)
    ds = pydicom.dcmread(path)
    data = [float(v) for v in ds.ROIContourSequence[0].ContourSequence[0].ContourData]
    for i in range(2, len(data), 3):
        data[i] += 2.5  # the next slice, which the 3-slice CT does not have
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = [f"{v:.4f}" for v in data]
    ds.save_as(path)
    with pytest.raises(DicomObjectError) as info:
        read_rtstruct(path, ct)
    assert "ROI 'A'" in str(info.value) and "not on a slice" in str(info.value) and ref.series_uid in str(info.value)


def test_rtstruct_roi_of_another_scan_is_left_out_with_a_warning(tmp_path):
    ct = _ct_series(tmp_path / "ct", n=3)
    path = write_rtstruct(tmp_path / "rs.dcm", ct, [("A", (1, 2, 3), [(0, _square(2, 2, 9, 9))]),
                                                    ("B", (4, 5, 6), [(1, _square(2, 2, 9, 9))])])
    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[1].ReferencedFrameOfReferenceUID = "1.2.3.9"
    del ds.ROIContourSequence[1].ContourSequence[0].ContourImageSequence
    other, study, series = Dataset(), Dataset(), Dataset()  # the set also names a PET in frame 1.2.3.9
    other.FrameOfReferenceUID, series.SeriesInstanceUID = "1.2.3.9", "1.2.3.10"
    study.RTReferencedSeriesSequence = Sequence([series])
    other.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence.append(other)
    ds.save_as(path)
    (labelmap,) = read_rtstruct(path, ct)
    assert [s.name for s in labelmap.segments] == ["A"]
    assert any("'B'" in w and "not shown" in w for w in labelmap.warnings)


def test_objects_need_a_dicom_ct(tmp_path, rtutils_dir):
    nii = read_scan(write_nifti(tmp_path / "ct.nii.gz", make_hu_volume((16, 16, 3)), np.eye(4)))
    with pytest.raises(DicomObjectError, match="not read from DICOM"):
        read_object(rtutils_dir / "rt.dcm", nii)


# --------------------------------------------------------------------------------------------- writing SEG


def _lung_mask(shape):
    mask = np.zeros(shape, np.uint8)
    _, y, x = shape
    mask[1:, 4:y - 4, 3:x // 2 - 1] = 1
    mask[1:-1, 6:y - 6, x // 2 + 1:x - 3] = 2
    return mask


def test_write_seg_reads_back_voxel_for_voxel(tmp_path):
    ct = _ct_series(tmp_path / "ct", n=3)
    ref = ct.geometry.dicom
    mask = _lung_mask(ct.shape)
    out = write_seg(mask, {1: "right_lung", 2: "left_lung"}, ct, tmp_path / "lungs.dcm", algorithm="napari-ctseg lungs v2")
    (labelmap,) = read_seg(out, ct)
    by_name = {s.name: s for s in labelmap.segments}
    assert set(by_name) == {"right lung", "left lung"}
    for value, name in ((1, "right lung"), (2, "left lung")):
        assert np.array_equal(labelmap.data == by_name[name].value, mask == value)
    # highdicom (and pydicom) read the same frames, on the series' own images
    seg = hd.seg.segread(out)
    frames = seg.get_pixels_by_source_instance(ref.sop_instance_uids, assert_missing_frames_are_empty=True)
    assert np.array_equal(ct.geometry.to_display(frames[..., 0].transpose(2, 1, 0)), mask == 1)
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == ref.study_uid and ds.FrameOfReferenceUID == ref.frame_of_reference_uid
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ref.series_uid
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == set(ref.sop_instance_uids)
    positions = {tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                 for f in ds.PerFrameFunctionalGroupsSequence}
    assert positions <= {tuple(round(v, 3) for v in p) for p in ref.positions}
    right = next(s for s in ds.SegmentSequence if s.SegmentLabel == "right lung")
    assert right.SegmentedPropertyTypeCodeSequence[0].CodeValue == "3341006"
    assert right.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert right.SegmentAlgorithmType == "AUTOMATIC"
    algo = right.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("napari-ctseg lungs", "v2")
    assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert by_name["right lung"].color == (0x4f, 0x9a, 0xe0)  # the lungs card's colour, through CIELab
    assert ds.Manufacturer == "napari-ctseg"


def test_write_seg_infection_manual_and_empty(tmp_path):
    ct = _ct_series(tmp_path / "ct", n=3)
    out = write_seg(np.zeros(ct.shape, np.uint8), {1: "infection"}, ct, tmp_path / "infection.dcm")
    ds = pydicom.dcmread(out)
    (segment,) = ds.SegmentSequence
    assert segment.SegmentAlgorithmType == "MANUAL"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # morphologically abnormal
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # lesion
    assert segment.AnatomicRegionSequence[0].CodeValue == "39607008"  # lung
    (labelmap,) = read_seg(out, ct)
    assert labelmap.segments[0].name == "infection" and not labelmap.data.any()
    mask = np.zeros(ct.shape, np.uint8)
    mask[1, 5:9, 5:9] = 1
    corrected = write_seg(mask, {1: "infection"}, ct, tmp_path / "c.dcm", algorithm="napari-ctseg infection v3",
                          corrected=True)
    assert pydicom.dcmread(corrected).SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert np.array_equal(read_seg(corrected, ct)[0].data, mask)


def test_write_seg_on_real_series(shared_data, tmp_path):
    folder = shared_data / "liver_dcmqi_3slice" / "dicom"
    if not folder.is_dir():
        pytest.skip("liver_dcmqi_3slice is not in ../shared/data")
    import nibabel as nib

    ct = read_scan(folder)
    liver = nib.load(shared_data / "liver_dcmqi_3slice" / "liver.nii.gz")
    mask = ct.geometry.to_display((np.asanyarray(liver.dataobj) > 0).astype(np.uint8))
    assert mask.any()
    out = write_seg(mask, {1: "liver"}, ct, tmp_path / "liver.dcm", algorithm="napari-ctseg liver v3")
    (labelmap,) = read_seg(out, ct)
    assert np.array_equal(labelmap.data, mask)
    assert labelmap.segments[0].type["value"] == "10200004"


# --------------------------------------------------------------------------------------------- opening


def test_open_with_objects(tmp_path):
    ct = _ct_series(tmp_path / "ct", n=3)
    mask = _lung_mask(ct.shape)
    seg_path = write_seg(mask, {1: "right_lung", 2: "left_lung"}, ct, tmp_path / "lungs.dcm")
    shutil.move(seg_path, tmp_path / "ct" / "SEG0001")  # inside the series folder, no extension
    seg_path = tmp_path / "ct" / "SEG0001"
    write_rtstruct(tmp_path / "ct" / "RS0001", ct, [("Body", (255, 0, 0), [(k, _square(1, 1, 38, 34)) for k in range(3)])])
    volume, maps, problems = open_with_objects(tmp_path / "ct")
    assert problems == [] and np.array_equal(volume.hu, ct.hu)
    assert sorted(m.kind for m in maps) == ["RTSTRUCT", "SEG"]
    assert not any(w.startswith("also here") for w in volume.warnings)
    seg_map = next(m for m in maps if m.kind == "SEG")
    assert np.array_equal(seg_map.data > 0, mask > 0)
    # A SEG file alone opens with its series, from the same folder.
    volume2, maps2, _ = open_with_objects(seg_path)
    assert np.array_equal(volume2.hu, ct.hu) and [m.kind for m in maps2] == ["SEG"]
    assert any("1 RTSTRUCT" in w for w in volume2.warnings)
    # Without its series: one line naming the series.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(seg_path, alone / "seg.dcm")
    with pytest.raises(DicomObjectError) as info:
        open_with_objects(alone / "seg.dcm")
    assert ct.geometry.dicom.series_uid in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in alone.iterdir()) == ["seg.dcm"]


def test_open_highdicom_folder(highdicom_dir):
    volume, maps, problems = open_with_objects(highdicom_dir)
    assert volume.shape == (1, 128, 128) and problems == []
    assert [m.name for m in maps] == ["first segment"]
    assert any("4 SEG for another series" in w for w in volume.warnings)


def test_open_rtutils_folder_reports_broken_ones(rtutils_dir):
    volume, maps, problems = open_with_objects(rtutils_dir)
    assert [m.name for m in maps] == ["ROI-1"]
    assert len(problems) == 2 and all("not in the CT series" in p for p in problems)
    assert any("2 RTSTRUCT" in w for w in volume.warnings)


def test_open_with_objects_is_read_scan_otherwise(tmp_path):
    path = write_nifti(tmp_path / "ct.nii.gz", make_hu_volume((16, 16, 3)), np.eye(4))
    volume, maps, problems = open_with_objects(path)
    assert maps == [] and problems == [] and volume.shape == (3, 16, 16)
    with pytest.raises(CTSegError):
        open_with_objects(tmp_path / "missing.nii.gz")


def _dciodvfy_errors(path):
    import subprocess

    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_written_seg_passes_dciodvfy(tmp_path, shared_data):
    ct = _ct_series(tmp_path / "ct", n=3)
    out = write_seg(_lung_mask(ct.shape), {1: "right_lung", 2: "left_lung"}, ct, tmp_path / "lungs.dcm",
                    algorithm="napari-ctseg lungs v2")
    assert _dciodvfy_errors(out) == []
    chest = shared_data / "chest_lungdx_a0001" / "dicom"
    if chest.is_dir():  # a TCIA export, whose CT carries a reference that needs cleaning
        ct = read_scan(chest)
        mask = (ct.hu < -400).astype(np.uint8)
        mask[:, :, : ct.shape[2] // 2] *= 2
        out = write_seg(mask, {1: "left_lung", 2: "right_lung"}, ct, tmp_path / "chest.dcm",
                        algorithm="napari-ctseg lungs v2")
        assert _dciodvfy_errors(out) == []
        (labelmap,) = read_seg(out, ct)
        names = {s.value: s.name for s in labelmap.segments}
        back = np.zeros_like(mask)
        for value, name in names.items():
            back[labelmap.data == value] = 1 if name == "left lung" else 2
        assert np.array_equal(back, mask)
