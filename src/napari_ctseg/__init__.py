"""napari-ctseg: CT segmentation in napari (lungs, liver, COVID-19 infection).

The core is free of Qt and napari, one folder per step of the workflow:

* ``io``: reading scans (NIfTI, DICOM, DICOM SEG and RTSTRUCT) onto one display grid
  (``CTVolume``), writing masks back on the scan's own geometry;
* ``models``: model cards, the registry of versions, the network and its input;
* ``segmentation``: Segment volume (``segment``), post-processing, the report's caveats;
* ``editing``: the mask tools, click to correct (``refine``), the corrections store;
* ``training``: training (``train``), fine-tuning, the engine, the label makers;
* ``evaluation``: metrics and evaluation against expert masks (``evaluate``);
* ``cohort``: many scans on a Dask cluster;
* ``cli``: ``ctseg``, the same jobs headless.

``napari_ctseg._napari`` is the thin plugin layer, the only place that imports napari or Qt.
The names below are importable from the package itself (loaded on first use).
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-ctseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_PUBLIC = {
    "CTVolume": "napari_ctseg.io.volume", "window_presets": "napari_ctseg.io.volume",
    "read_scan": "napari_ctseg.io", "write_mask": "napari_ctseg.io.nifti",
    "segment": "napari_ctseg.segmentation.inference", "segment_image8": "napari_ctseg.segmentation.inference",
    "refine": "napari_ctseg.editing.refine", "Click": "napari_ctseg.editing.refine",
    "evaluate": "napari_ctseg.evaluation.evaluate",
    "train": "napari_ctseg.training.recipe", "fine_tune": "napari_ctseg.training.fine_tuning",
    "run_cohort": "napari_ctseg.cohort.run",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'napari_ctseg' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
