"""napari-ctseg dock widgets (Qt)."""
