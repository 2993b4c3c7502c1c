"""Caveats on the infection figure (raised lung density, gravity-dependent infection) on
synthetic chests: a soft-tissue body, two lungs with vessels, lesions and bands drawn here."""
import json

import numpy as np
import pytest
from synthetic import make_hu_volume, write_nifti

from napari_ctseg.segmentation.caveats import (
    DENSE_LUNG_HU,
    RAISED_LUNG_HU,
    infection_caveats,
    lung_figures,
)
from napari_ctseg.segmentation.inference import segment
from napari_ctseg.io import read_nifti

SHAPE = (40, 96, 128)  # (z, y, x): y runs anterior -> posterior, x right -> left
SPACING = (5.0, 2.0, 2.0)
Z, Y, X = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
CY, RY, RX = 46, 30, 20  # each lung: an elliptic cylinder, y 17..75, over slices 3..36


def chest(lung_hu=-860.0, gradient=30.0, seed=0):
    """(hu int16, lungs uint8 1 right 2 left): a body at 40 HU and two lungs at ``lung_hu``
    rising by ``gradient`` HU from their front to their back (a supine lung), with vessels."""
    rng = np.random.default_rng(seed)
    body = ((Y - 48) / 46.0) ** 2 + ((X - 64) / 62.0) ** 2 < 1
    lungs = np.zeros(SHAPE, np.uint8)
    for label, cx in ((1, 38), (2, 90)):
        lungs[np.broadcast_to((((Y - CY) / RY) ** 2 + ((X - cx) / RX) ** 2 < 1) & (Z >= 3) & (Z < 37),
                              SHAPE)] = label
    hu = np.where(body, 40.0, -1000.0) + np.zeros(SHAPE)
    lung = lungs > 0
    ramp = lung_hu + gradient * (Y - CY) / (2.0 * RY) + np.zeros(SHAPE)
    hu[lung] = ramp[lung]
    # vessels: 40 tubes along z of soft tissue, part of the lung mask as in real lung masks
    yx = np.argwhere(lung[20])
    for y0, x0 in yx[rng.choice(len(yx), 40, replace=False)]:
        tube = np.broadcast_to(((Y - y0) ** 2 + (X - x0) ** 2 <= 2), SHAPE) & lung
        hu[tube] = 40.0
    hu += rng.normal(0, 25, SHAPE)
    return np.round(hu).astype(np.int16), lungs


def posterior_band(lungs):
    """The back tenth of each lung's y extent on 28 of its 34 slices (dependent atelectasis)."""
    return (lungs > 0) & (Y >= 70) & (Z >= 5) & (Z < 33)


def anterior_mirror(lungs):
    """The band mirrored to the front of the lungs: the same voxels, the same slices."""
    return (lungs > 0) & (Y <= 22) & (Z >= 5) & (Z < 33)


def ball(lungs, z, y, x, rz, ryx):
    return (lungs > 0) & (((Z - z) / rz) ** 2 + ((Y - y) ** 2 + (X - x) ** 2) / ryx ** 2 <= 1)


def codes(hu, lungs, infection):
    return [c.code for c in infection_caveats(hu, lungs, infection, SPACING)]


def test_normal_lungs_and_a_focal_lesion_have_no_caveat():
    hu, lungs = chest()
    lesion = ball(lungs, 20, 64, 38, 3, 8)  # dependent, but a few slices: focal
    hu[lesion] = -300
    f = lung_figures(hu, lungs, lesion, SPACING)
    assert 0.5 < f["infected_pct"] < 2 and f["dependent_share_pct"] > 70  # the checks do apply
    assert f["aerated_median_hu"] == pytest.approx(-860, abs=15)
    assert f["infected_slices_pct"] < 30
    assert codes(hu, lungs, lesion) == []
    assert codes(hu, lungs, None) == []  # nothing marked: nothing to say


def test_expiration_raises_the_density_caveat():
    hu, lungs = chest(lung_hu=-650)
    patches = (lungs > 0) & ((Z // 4 + X // 6) % 2 == 0)  # infection over much of the lung
    hu_codes = codes(hu, lungs, patches)
    assert "raised_lung_density" in hu_codes and "gravity_dependent" not in hu_codes
    (c,) = [c for c in infection_caveats(hu, lungs, patches, SPACING) if c.code == "raised_lung_density"]
    assert c.figures["lung_median_hu"] == pytest.approx(-650, abs=20)
    assert c.figures["lung_median_hu"] > RAISED_LUNG_HU
    assert "expiration" in c.message and "check before reading this as involvement" in c.message
    # said whenever infection is reported, even when hardly any is marked
    assert codes(hu, lungs, np.zeros_like(patches)) == ["raised_lung_density"]
    # and the whole lung is measured when the model marked nearly all of it
    assert codes(hu, lungs, lungs > 0)[0] == "raised_lung_density"


def test_extensive_infection_on_dense_lung_is_said_normal_density_is_not():
    patches = (chest()[1] > 0) & ((Z // 4 + X // 6) % 2 == 0)
    hu, lungs = chest(lung_hu=-790)
    assert DENSE_LUNG_HU < -790 < RAISED_LUNG_HU
    assert codes(hu, lungs, patches) == ["extensive_with_dense_lung"]
    hu, lungs = chest(lung_hu=-860)
    assert codes(hu, lungs, patches) == []


def test_posterior_band_over_most_slices_is_gravity_dependent():
    hu, lungs = chest()
    band = posterior_band(lungs)
    hu[band] = -500
    cav = infection_caveats(hu, lungs, band, SPACING)
    assert [c.code for c in cav] == ["gravity_dependent"]
    c = cav[0]
    assert c.figures["dependent_share_pct"] == pytest.approx(100.0)
    assert c.figures["infected_slices_pct"] > 75
    assert "supine" in c.message and "atelectasis" in c.message


@pytest.mark.parametrize("where", ["mirrored band", "focal"])
def test_anterior_infection_of_the_same_size_is_not_gravity_dependent(where):
    hu, lungs = chest()
    n_band = int(posterior_band(lungs).sum())
    if where == "mirrored band":
        lesion = anterior_mirror(lungs)
    else:  # the front third of both lungs over as few slices as hold the band's voxels
        front = (lungs > 0) & (Y < 37)
        per_slice = front[20].sum()
        k = int(round(n_band / per_slice))
        lesion = front & (Z >= 12) & (Z < 12 + k)
        assert k <= 8
    assert int(lesion.sum()) == pytest.approx(n_band, rel=0.2)
    hu[lesion] = -500
    f = lung_figures(hu, lungs, lesion, SPACING)
    assert f["dependent_share_pct"] == 0.0
    assert codes(hu, lungs, lesion) == []


def test_steep_gradient_and_mostly_dependent_focal_infection():
    """Mostly (not 70 %) dependent and focal: flagged only where the lung's own density
    follows gravity steeply."""
    lesion_at = dict(z=20, y=59, x=38, rz=3, ryx=9)
    for gradient, flagged in ((30.0, False), (220.0, True)):
        hu, lungs = chest(gradient=gradient)
        lesion = ball(lungs, **lesion_at)
        hu[lesion] = -400
        f = lung_figures(hu, lungs, lesion, SPACING)
        assert 50 <= f["dependent_share_pct"] < 70 and f["infected_slices_pct"] < 30
        assert (f["ap_gradient_hu"] > 100) == flagged
        assert ("gravity_dependent" in codes(hu, lungs, lesion)) == flagged


def test_no_lung_no_caveat():
    hu, lungs = chest()
    assert infection_caveats(hu, np.zeros_like(lungs), lungs > 0, SPACING) == []


def _phantom(tmp_path, raise_lungs_by=0):
    data = make_hu_volume((40, 36, 11))
    lung = (data < -800) & (data > -900)
    data[lung] += raise_lungs_by
    volume = read_nifti(write_nifti(tmp_path / "ct.nii.gz", data, np.diag([-0.8, -0.8, 2.0, 1.0])))
    hu = volume.hu
    lungs = ((hu > -900) & (hu < -500)).astype(np.uint8)
    lungs[:, :, hu.shape[2] // 2:] *= 2
    assert lungs.any()
    return volume, lungs


def test_segment_report_and_json_say_the_caveat(tiny_weights, tmp_path):
    volume, lungs = _phantom(tmp_path, raise_lungs_by=200)  # lungs at -650 HU: an expiration
    result = segment(volume, ["infection"], "cpu", lungs=lungs)
    assert "raised_lung_density" in [c.code for c in result.caveats]
    lines = result.report().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("lung involved by infection"))
    assert lines[at + 1].startswith("  caution: diffuse increased lung density")
    assert "expiration" in lines[at + 1]
    d = json.loads(json.dumps(result.to_dict()))
    assert d["caveats"][0]["code"] == "raised_lung_density"
    assert d["caveats"][0]["figures"]["lung_median_hu"] > RAISED_LUNG_HU

    normal, lungs = _phantom(tmp_path)  # -850 HU: a normal inspiration
    result = segment(normal, ["infection"], "cpu", lungs=lungs)
    assert "raised_lung_density" not in [c.code for c in result.caveats]
    assert "caveats" in result.to_dict()
