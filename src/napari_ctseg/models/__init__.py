"""The networks, their preprocessing, and the registry of model versions (Qt-free).

* ``unet``: ``UNet2D`` and ``build_model(architecture)``;
* ``preprocess``: HU slices to network input and predictions back to the scan's grid,
  as a model card's ``preprocessing`` dict describes;
* ``registry``: ``ModelRegistry`` (where versions are found, which one is active),
  ``ModelCard``, ``load_model``.
"""
from napari_ctseg.errors import ModelError
from napari_ctseg.models.preprocess import (
    Preprocessing,
    SliceCrop,
    find_crop,
    image8_to_input,
    labels_from_probs,
    probs_to_grid,
    slices_to_input,
)
from napari_ctseg.models.predict import predict_image8, predict_slices, predict_volume
from napari_ctseg.models.registry import TARGETS, ModelCard, ModelRegistry, active_version, get_card, list_versions, load_model
from napari_ctseg.models.unet import UNet2D, build_model

__all__ = [
    "TARGETS", "ModelCard", "ModelError", "ModelRegistry", "Preprocessing", "SliceCrop", "UNet2D", "active_version",
    "build_model", "find_crop", "get_card", "image8_to_input", "labels_from_probs", "list_versions",
    "load_model", "predict_image8", "predict_slices", "predict_volume", "probs_to_grid", "slices_to_input",
]
