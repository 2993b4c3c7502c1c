"""DICOM SEG and RT Structure Sets: read onto the CT series they refer to; write both.

``common`` (what a file holds, finding objects in a folder, label maps), ``seg`` (SEG in and
out), ``rtstruct`` (RTSTRUCT in and out), ``opening`` (a folder or an object with its CT). The public
names are importable from here.

Reading gives ``LabelMap`` objects: a uint8 array on the CT's display grid (z, y, x), the
segments or ROIs it holds (value in the array, number in the file, name, colour, for SEG the
coded category and type) and the file it came from. Segments that overlap cannot share one
label map, so they are spread over several: each segment goes into the first map (in the
file's order) where it overlaps nothing already there. Segments that do not overlap thus
give one multi-label map; two overlapping segments give two maps; an RTSTRUCT with a body
outline and organs inside it gives two (the body, then the organs).

* **SEG** (binary, fractional, labelmap): highdicom parses the object, its segment
  descriptions and decodes each frame (``Segmentation.get_stored_frame``: bit-packed
  binary, compressed frames). Fractional values are thresholded at 0.5 (stored value at
  least half of MaximumFractionalValue). Each frame is put on the CT slice it was derived
  from (its ReferencedSOPInstanceUID), or else on the slice its ImagePositionPatient lies on
  (within half a slice); frames for some slices only are fine.
* **RTSTRUCT**: written here with pydicom and ``skimage.draw.polygon2mask``, because
  highdicom has no RT Structure Set support and rt-utils needs OpenCV (a large binary
  dependency for one polygon fill) and silently drops contours that lie on no slice. Each
  closed planar contour is filled on the slice it references (or lies on); several contours
  of one ROI on one slice combine by even-odd (XOR), so a contour inside another is a hole.
  Open contours and points have no inside and are left out (with a warning).

A SEG or RTSTRUCT for another series, or one whose frames or contours lie on images or
positions the CT does not have, raises ``DicomObjectError`` naming what is missing.

``write_seg`` writes a mask as a BINARY DICOM SEG with highdicom: it references the source
series (Study, Series and SOP Instance UIDs, Frame of Reference, per-frame positions, all
taken by highdicom from the source files' headers), codes each segment (see ``SEGMENT_CODES``)
and names the algorithm (napari-ctseg and the model's version, or manual).

``write_rtstruct`` (one label mask) and ``write_rois`` (several, overlapping masks: a whole
segmentation result in one structure set) write an RT Structure Set with pydicom: contours
traced by scikit-image half-way between pixel centres, so that reading gives the mask back
voxel for voxel; ROI names, colours and generation algorithm, references to the CT's study,
series, Frame of Reference and images. rt-utils was considered and not used: it requires
``opencv-python`` (whose bundled Qt clashes with napari's; the headless build does not
satisfy the requirement), invents a Frame of Reference UID for a series without one, reads
every file under a folder (several series mix), and scales the column axis by the row spacing.
"""
from napari_ctseg.io.dicom_objects.common import (
    OBJECT_KINDS,
    RTSTRUCT_SOP_CLASS,
    SEG_SOP_CLASS,
    DicomObject,
    LabelMap,
    Segment,
    describe_object,
    find_objects,
    object_kind,
)
from napari_ctseg.io.dicom_objects.opening import OTHER_OBJECTS_NOTE, open_with_objects, read_object
from napari_ctseg.io.dicom_objects.rtstruct import Roi, is_rtstruct_name, label_rois, read_rtstruct, write_rois, write_rtstruct
from napari_ctseg.io.dicom_objects.seg import card_colours, check_dicom_source, check_seg_source, read_seg, write_seg

__all__ = ["OBJECT_KINDS", "OTHER_OBJECTS_NOTE", "RTSTRUCT_SOP_CLASS", "SEG_SOP_CLASS", "DicomObject", "LabelMap",
           "Roi", "Segment", "card_colours", "check_dicom_source", "check_seg_source", "describe_object",
           "find_objects", "is_rtstruct_name", "label_rois", "object_kind", "open_with_objects", "read_object", "read_rtstruct",
           "read_seg", "write_rois", "write_rtstruct", "write_seg"]
