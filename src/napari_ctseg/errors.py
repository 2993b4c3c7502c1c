"""Errors a user can cause. Each message names the file and, where there is one, the fix.

The CLI prints ``str(error)`` on one line and exits non-zero; the napari layer shows it
as a notification. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class CTSegError(Exception):
    """An expected error with a message meant for the user."""


class ScanReadError(CTSegError):
    """The file or folder could not be read as a CT scan."""


class NotAScanError(ScanReadError):
    """The path holds no NIfTI or DICOM image at all."""


class ScanTooLargeError(ScanReadError):
    """The scan would not fit in the memory available."""


class MaskWriteError(CTSegError):
    """A mask could not be written (wrong shape, would overwrite the scan, ...)."""


class ModelError(CTSegError):
    """A model could not be found, built or loaded (unknown architecture, missing or corrupt weights)."""


class TrainingError(CTSegError):
    """Training could not start or go on (missing data, unknown target, bad settings)."""


class RefineError(CTSegError):
    """Clicks could not refine a mask (a click outside the scan, on another label, no clicks, ...)."""


class DicomObjectError(CTSegError):
    """A DICOM SEG or RT Structure Set could not be read onto its CT, or a SEG not written
    (the series it refers to is not here, a reference does not match, the scan is not DICOM)."""
