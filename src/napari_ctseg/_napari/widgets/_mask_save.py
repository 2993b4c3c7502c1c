"""Mask tools: the Save corrected mask panel.

It writes ``<scan>_<target>_corrected.nii.gz`` with ``io.write_mask`` (the scan's exact
geometry; the scan itself is never overwritten, an existing file only after the user agrees),
or for a DICOM scan ``.dcm`` (DICOM SEG) or ``_rtstruct.dcm`` (RT Structure Set): the Format
choice sets the name's ending and the name's ending decides,
as a job (``save_steps``) through the plugin's one Qt adapter (``_napari/_jobs.py``), off
the GUI thread, and records the pair in the corrections store (``napari_ctseg.editing.corrections``)
with the z slices changed since the mask was made. The mask is copied when the button is
pressed, so painting on meanwhile is safe.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QToolButton,
)

from napari_ctseg.editing import corrections

from napari_ctseg.editing import tools as editing
from napari_ctseg.errors import CTSegError
from napari_ctseg.io import write_mask
from napari_ctseg.io.nifti import is_nifti_path, scan_name
from napari_ctseg.jobs import Job, Progress, run
from napari_ctseg.io.volume import Geometry
from napari_ctseg._napari._jobs import run_job


def _bundled_data_dir() -> Path | None:
    try:
        from importlib.resources import files

        return Path(str(files("napari_ctseg") / "data")).resolve()
    except (ModuleNotFoundError, TypeError):
        return None


# A layer's own folder for its corrected mask (e.g. the Cohort widget's <cohort>/<scan id>/, since
# an archive of scans may be read-only); without it the mask goes beside the scan.
SAVE_FOLDER_KEY = "ctseg_save_folder"


def default_output(geometry: Geometry | None, target: str, fallback_name: str) -> tuple[Path, str]:
    """(folder, file name) for a corrected mask: beside the scan, ``<scan>_<target>_corrected.nii.gz``.

    A DICOM series' mask goes beside its folder (not among its files); a scan of unknown
    origin, or the bundled sample, gives the user's home folder.
    """
    folder, name = Path.home(), fallback_name
    source = Path(geometry.source_path) if geometry is not None and geometry.source_path else None
    if source is not None:
        if is_nifti_path(source):
            folder, name = source.parent, scan_name(source)
        else:  # DICOM: the series' folder, or the folder of the file that was opened
            series = source if source.is_dir() else source.parent
            folder, name = series.parent, series.name
        bundled = _bundled_data_dir()
        if bundled is not None and folder.resolve() == bundled:
            folder = Path.home()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{name}_{target}_corrected")
    return folder, f"{safe}{'.dcm' if seg_possible(geometry) else '.nii.gz'}"


def seg_possible(geometry: Geometry | None) -> bool:
    """Whether a DICOM SEG can reference this scan (opened from DICOM, with what SEG needs)."""
    from napari_ctseg.io.dicom_objects import check_seg_source

    if geometry is None:
        return False
    try:
        check_seg_source(geometry, "scan")
    except CTSegError:
        return False
    return True


def is_seg_name(name) -> bool:
    """A DICOM name: a SEG, or an RTSTRUCT when it ends ``rtstruct.dcm`` (``is_rtstruct_name``)."""
    return str(name).lower().endswith(".dcm")


# Save corrected mask's formats, and the name's ending each gives.
FORMATS = {"NIfTI": ".nii.gz", "DICOM SEG": ".dcm", "RTSTRUCT": "_rtstruct.dcm"}


def format_of(name) -> str:
    from napari_ctseg.io.dicom_objects import is_rtstruct_name

    return "RTSTRUCT" if is_rtstruct_name(name) else "DICOM SEG" if is_seg_name(name) else "NIfTI"


def with_format(name: str, fmt: str) -> str:
    """``name`` with the ending of format ``fmt`` in place of its own."""
    low = name.lower()
    for ending in ("_rtstruct.dcm", ".rtstruct.dcm", "rtstruct.dcm", ".dcm", ".nii.gz", ".nii"):
        if low.endswith(ending):
            name = name[: len(name) - len(ending)]
            break
    return name + FORMATS[fmt]


def save_steps(path: Path, data: np.ndarray, geometry: Geometry, baseline,
               labels: dict[int, str] | None = None, algorithm: str = "manual") -> Job:
    """Save corrected mask as a job: write the mask on the scan's geometry (NIfTI, DICOM SEG
    for a ``.dcm`` name, RTSTRUCT for a ``rtstruct.dcm`` one: ``labels`` names the values,
    ``algorithm`` the model that made it), then measure it. Returns (path written, changed z
    slices, voxels per label)."""
    yield Progress(0, 2, f"writing {path.name}")
    if format_of(path) == "RTSTRUCT":
        from napari_ctseg.io.dicom_objects import write_rtstruct

        written = write_rtstruct(data, labels or {}, geometry, path, algorithm=algorithm, corrected=True)
    elif is_seg_name(path):
        from napari_ctseg.io.dicom_objects import write_seg

        written = write_seg(data, labels or {}, geometry, path, algorithm=algorithm, corrected=True)
    else:
        written = write_mask(path, data, geometry)
    yield Progress(1, 2, "measuring the changed slices")
    return written, corrections.changed_slices(baseline, data), editing.label_voxels(data)


class SavePanel(QGroupBox):
    """Folder, file name and Save corrected mask, for the layer the Mask tools work on (``host``)."""

    def __init__(self, host):
        super().__init__("Save corrected mask")
        self.host = host
        self.worker = None  # the save job, while it writes
        save = QGridLayout(self)
        self.folder_edit = QLineEdit()
        self.folder_edit.setToolTip("Folder of the corrected mask (default: the scan's folder)")
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose the folder")
        browse.clicked.connect(self._browse_folder)
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip("File name: .nii.gz (NIfTI), .dcm (DICOM SEG on the scan's DICOM series; the "
                                  "default for a scan opened from DICOM) or _rtstruct.dcm (RT Structure Set on "
                                  "that series); written on the scan's exact geometry")
        self.format_box = QComboBox()
        self.format_box.addItems(list(FORMATS))
        self.format_box.setToolTip("NIfTI, DICOM SEG or RTSTRUCT (the two DICOM ones need a scan opened from "
                                   "DICOM, with a Frame of Reference UID); sets the name's ending")
        self.format_box.currentTextChanged.connect(self._format_chosen)
        self.name_edit.textChanged.connect(self._name_changed)
        self.save_button = QPushButton("Save corrected mask")
        self.save_button.setToolTip("Write the mask beside the scan and add it to your corrections "
                                    "(for fine-tuning); never overwrites the scan")
        save.addWidget(QLabel("Folder"), 0, 0)
        save.addWidget(self.folder_edit, 0, 1)
        save.addWidget(browse, 0, 2)
        save.addWidget(QLabel("Name"), 1, 0)
        save.addWidget(self.name_edit, 1, 1, 1, 2)
        save.addWidget(QLabel("Format"), 2, 0)
        save.addWidget(self.format_box, 2, 1, 1, 2)
        save.addWidget(self.save_button, 3, 0, 1, 3)
        self.save_button.clicked.connect(self._save_clicked)

    def set_default_output(self) -> None:
        layer, image = self.host.layer, self.host.selected_image()
        target = str(layer.metadata.get("target") or layer.name)
        folder, name = default_output(self.host.geometry(), target, image.name if image is not None else layer.name)
        folder = layer.metadata.get(SAVE_FOLDER_KEY) or folder
        self.folder_edit.setText(str(folder))
        self.name_edit.setText(name)

    def _format_chosen(self, fmt: str) -> None:
        name = self.name_edit.text().strip()
        if name and format_of(name) != fmt:
            self.name_edit.setText(with_format(name, fmt))

    def _name_changed(self, name: str) -> None:
        fmt = format_of(name.strip())
        if self.format_box.currentText() != fmt and (fmt != "NIfTI" or is_nifti_path(name.strip())):
            self.format_box.blockSignals(True)
            self.format_box.setCurrentText(fmt)
            self.format_box.blockSignals(False)

    def _browse_folder(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder for the corrected mask", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def output_path(self) -> Path:
        name = self.name_edit.text().strip()
        if name and not is_nifti_path(name) and not is_seg_name(name):
            name += FORMATS[self.format_box.currentText()]
        return Path(self.folder_edit.text().strip() or Path.home()).expanduser() / name

    def _save_clicked(self):
        if self.worker is not None:
            return
        job = self._prepare_save(None)
        if job is None:
            return
        self.host.say(f"Saving {job['path'].name} ...")
        self.worker = run_job(
            save_steps(job["path"], job["data"], job["geometry"], job["baseline"], job["labels"], job["algorithm"]),
            title="Save corrected mask", owner=self, status=self.host.status, start_button=self.save_button,
            on_done=lambda out: self._finish_save(job, *out), on_finished=self._save_finished,
            failed_text="Not saved: {error}")

    def _save_finished(self):
        self.worker = None
        self.host.update_enabled()

    def _ask_overwrite(self, path: Path) -> bool:
        answer = QMessageBox.question(
            self, "Replace the file?", f"{path.name} already exists in {path.parent}.\nReplace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def save_corrected(self, overwrite: bool | None = None) -> Path | None:
        """Write the mask and record it, here and now (the button runs the same job in a worker
        thread); see ``MaskToolsWidget.save_corrected``."""
        job = self._prepare_save(overwrite)
        if job is None:
            return None
        try:
            out = run(save_steps(job["path"], job["data"], job["geometry"], job["baseline"], job["labels"],
                                 job["algorithm"]))
        except CTSegError as exc:
            show_error(f"Save corrected mask: {exc}")
            self.host.say(f"Not saved: {exc}")
            return None
        return self._finish_save(job, *out)

    def _prepare_save(self, overwrite: bool | None) -> dict | None:
        """What to write where (the mask copied now), after the checks and the overwrite question."""
        if not self.host.ready("Save corrected mask"):
            return None
        layer = self.host.layer
        geometry = self.host.geometry()
        if geometry is None:
            show_error(f"Save corrected mask: '{layer.name}' has no scan geometry; open the CT with "
                       "napari-ctseg and choose it as the CT image")
            return None
        if not self.name_edit.text().strip():
            show_error("Save corrected mask: type a file name")
            return None
        path = self.output_path()
        if is_seg_name(path):
            from napari_ctseg.io.dicom_objects import check_dicom_source

            try:
                check_dicom_source(geometry, path.name, "RTSTRUCT" if format_of(path) == "RTSTRUCT" else "DICOM SEG")
            except CTSegError as exc:
                show_error(f"Save corrected mask: {exc} (name it .nii.gz)")
                self.host.say(f"Not saved: {exc}")
                return None
        same_as_scan = bool(geometry.source_path) and path.resolve() == Path(geometry.source_path).resolve()
        if path.exists() and not same_as_scan:
            if overwrite is None:
                overwrite = self._ask_overwrite(path)
            if not overwrite:
                self.host.say(f"Not saved: {path.name} already exists")
                return None
        return {"path": path, "data": np.array(layer.data, copy=True), "geometry": geometry,
                "baseline": layer.metadata.get(corrections.BASELINE_KEY),
                "target": str(layer.metadata.get("target") or layer.name),
                "version": str(layer.metadata.get("model_version") or ""),
                "labels": self._label_names(layer), "algorithm": self._algorithm(layer)}

    @staticmethod
    def _label_names(layer) -> dict[int, str]:
        """Value -> name for a SEG or RTSTRUCT: the target's labels when its model made the layer, else its name."""
        target = str(layer.metadata.get("target") or "")
        try:
            from napari_ctseg.models.registry import get_card

            card = get_card(target, layer.metadata.get("model_version") or None)
            return {int(v): k for k, v in card.labels.items()}
        except CTSegError:
            values = [int(v) for v in np.unique(np.asarray(layer.data)) if v]
            return {v: layer.name if len(values) == 1 else f"{layer.name} {v}" for v in values}

    @staticmethod
    def _algorithm(layer) -> str:
        target, version = layer.metadata.get("target"), layer.metadata.get("model_version")
        return f"napari-ctseg {target} {version}" if target and version else "manual"

    def _finish_save(self, job: dict, written: Path, changed: list[int], voxels: dict[str, int]) -> Path:
        corrections.record_correction(job["geometry"].source_path, written, job["target"], job["version"],
                                      changed, voxels)
        n = len(changed)
        self.host.say(f"Saved {written.name} ({n} slice{'s' if n != 1 else ''} changed); "
                      f"added to your corrections")
        show_info(f"Saved {written} on the scan's geometry; added to your corrections")
        return written
