import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def private_user_data(tmp_path_factory, monkeypatch):
    """Every test gets its own user data folder (corrections, fine-tuned models, active choice)."""
    folder = tmp_path_factory.mktemp("xdg_data")
    monkeypatch.setenv("XDG_DATA_HOME", str(folder))
    return folder / "napari-ctseg"


@pytest.fixture
def shared_data():
    """The real data beside the repository (read-only); tests using it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not here")
    return SHARED_DATA


@pytest.fixture
def tiny_weights(tmp_path, monkeypatch):
    """Tiny untrained models for every target as version 't1'; the bundled weights are hidden."""
    from synthetic import write_tiny_weights

    root = tmp_path / "tiny_weights"
    write_tiny_weights(root)
    monkeypatch.setattr("napari_ctseg.models.registry.bundled_weights_dir", lambda: tmp_path / "no_bundled")
    monkeypatch.setenv("CTSEG_WEIGHTS_DIR", str(root))
    return root


@pytest.fixture
def screenshots(tmp_path):
    """Where screenshot tests save their PNGs for people: $CTSEG_SCREENSHOTS (made if missing),
    else a temporary folder, never the repository."""
    import os

    folder = Path(os.environ["CTSEG_SCREENSHOTS"]) if os.environ.get("CTSEG_SCREENSHOTS") else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
