"""16-bit TIFF slices and stacks in HU (io.tiff): orientation, pixel size, refusals, and every
target on a lone slice."""
import numpy as np
import pytest
import tifffile

from napari_ctseg.cli import main
from napari_ctseg.errors import NotAScanError
from napari_ctseg.io import is_scan_path, read_scan

SAMPLE = "src/napari_ctseg/data/chest_ct.nii.gz"


def test_a_slice_keeps_its_rows_and_columns_and_says_what_it_assumed(tmp_path):
    a = np.full((64, 80), -1000, np.int16)
    a[0, 0], a[63, 79] = 500, 300
    tifffile.imwrite(tmp_path / "s.tif", a)
    vol = read_scan(tmp_path / "s.tif")
    assert vol.hu.shape == (1, 64, 80) and vol.spacing == (1.0, 1.0, 1.0)
    assert vol.hu[0, 0, 0] == 500 and vol.hu[0, 63, 79] == 300  # shown as the file shows it
    assert any("1 mm is assumed" in w for w in vol.warnings)
    assert any("no patient orientation" in w for w in vol.warnings)
    # the display grid is radiological: column 0 is the patient's right (RAS x larger)
    aff = vol.geometry.display_affine
    assert (aff @ [0, 0, 0, 1])[0] > (aff @ [0, 0, 79, 1])[0]


def test_pixel_size_from_the_tags_and_imagej_stacks(tmp_path):
    a = np.full((32, 32), -900, np.int16)
    tifffile.imwrite(tmp_path / "cm.tif", a, resolution=(10 / 0.7, 10 / 0.8), resolutionunit=3)
    assert read_scan(tmp_path / "cm.tif").spacing == pytest.approx((1.0, 0.8, 0.7))
    stack = np.stack([a, a + 1, a + 2])
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(1 / 0.6, 1 / 0.6),
                     metadata={"spacing": 2.5, "unit": "mm"})
    vol = read_scan(tmp_path / "ij.tif")
    assert vol.hu.shape == (3, 32, 32) and vol.spacing == pytest.approx((2.5, 0.6, 0.6))
    assert list(vol.hu[:, 0, 0]) == [-900, -899, -898]
    assert not any("assumed" in w for w in vol.warnings)


def test_an_8_bit_tiff_is_not_a_ct(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "mask.tif", np.zeros((16, 16), np.uint8))
    assert not is_scan_path(tmp_path / "mask.tif")  # left to napari's own reader
    with pytest.raises(NotAScanError, match="uint8 TIFF is not a CT in HU"):
        read_scan(tmp_path / "mask.tif")
    assert main(["info", str(tmp_path / "mask.tif")]) != 0
    assert "not a CT in HU" in capsys.readouterr().err


def test_every_target_runs_on_a_lone_hu_slice(tmp_path, capsys):
    from napari_ctseg.evaluation.metrics import dice
    from napari_ctseg.segmentation.inference import segment

    chest = read_scan(SAMPLE)
    z = 40
    sl = np.asarray(chest.hu[z]).astype(np.int16)
    tifffile.imwrite(tmp_path / "slice.tif", sl, resolution=(10 / chest.spacing[2], 10 / chest.spacing[1]),
                     resolutionunit=3)
    assert main(["info", str(tmp_path / "slice.tif")]) == 0
    info = capsys.readouterr().out
    assert "tiff" in info and "1x192x192 (z,y,x" in info
    vol = read_scan(tmp_path / "slice.tif")
    res = segment(vol, ["lungs", "liver", "infection"], "cpu")
    assert set(res.masks) == {"lungs", "liver", "infection"}
    assert all(m.shape == (1, 192, 192) for m in res.masks.values())
    whole = segment(chest, ["lungs"], "cpu").masks["lungs"][z]
    assert dice(res.masks["lungs"][0] > 0, whole > 0) > 0.95  # as on the slice inside its volume
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "slice.tif"), "--targets", "lungs", "--out", str(out), "--device", "cpu"]) == 0
