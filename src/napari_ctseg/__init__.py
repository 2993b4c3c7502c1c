"""napari-ctseg: CT segmentation in napari (lungs, liver, COVID-19 infection).

The core (``volume``, ``io``, ``models``, ``inference``, ``training``, ``metrics``,
``editing``) is free of Qt and napari; ``napari_ctseg._napari`` is the thin plugin layer.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-ctseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from napari_ctseg.io.volume import CTVolume, window_presets  # noqa: E402

__all__ = ["CTVolume", "window_presets", "__version__"]
