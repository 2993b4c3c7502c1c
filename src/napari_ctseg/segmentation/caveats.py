"""When the infection figure may not be infection: caveats measured on the lungs (Qt-free).

On chests without COVID-19 the infection model marks lung that is merely denser than
usual: a scan taken in expiration (the density of the whole lung is raised) and dependent
atelectasis (a posterior band that follows gravity). ``infection_caveats`` measures, on the
lung mask, what gives those away and returns one ``Caveat`` per finding; the infection
figures themselves stay the mask's.

Volumes are (z, y, x): z from the head to the feet, y from ANTERIOR to POSTERIOR (for a
supine patient the dependent lung is at large y), x from the patient's right to the left.
Lungs: 1 right, 2 left (any other non-zero label is a lung of its own).

Measured (on the lungs' bounding box only, vectorised; no full-size float copy):

* the median HU of the lung NOT marked infected (the aerated lung) and of the whole lung;
* per lung and per axial slice, the lung's extent in y split into thirds: the share of the
  infected voxels in the posterior (dependent) third, and the median HU of the aerated lung
  in the posterior third minus that in the anterior third (the gravity gradient);
* the share of the lung's slices that hold infection (diffuse rather than a few lesions).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_ctseg.segmentation.postprocess import bbox

# --- thresholds --------------------------------------------------------------------------
# Aerated lung in a normal inspiration has a median near -850 HU (-858 and -887 HU in the
# expert lung masks here; the literature gives about -850..-900 HU at full inspiration). At
# expiration the lung holds less air and its median rises to about -750..-600 HU. -750 lies
# 100 HU above a normal inspiration and at the least dense end of expiration: the chests
# without COVID-19 here measure -887..-816 HU (silver lung masks of full chests included;
# -816 is chest_itk00, probably a 4D-CT phase), all clear of it.
RAISED_LUNG_HU = -750.0
# When the model marks a large share of the lung, it has taken the densest part away from
# the "aerated" lung, so the remaining lung's median understates a raised density: then a
# lower bar applies (still 50 HU above a normal inspiration's -850).
EXTENSIVE_INFECTION_PCT = 25.0
DENSE_LUNG_HU = -800.0
# The infection-based caveats need a non-trivial amount of infection (% of the lung).
MIN_INFECTION_PCT = 0.5
# Gravity dependence: most infection in the dependent third of each lung's y extent (uniform
# marks put a third to 40 % there; marking all lung above -700 HU, i.e. the vessels, in the
# real chests here put 34-42 %) ...
DEPENDENT_SHARE = 0.70
# ... spread over many of the lung's slices (a few focal lesions touch only a few) ...
DIFFUSE_SLICE_SHARE = 0.30
# ... or mostly dependent infection with a steep anterior-posterior density gradient of the
# aerated lung (posterior third minus anterior third; normal supine inspirations show about
# 0-70 HU, dependent atelectasis and expiration more).
MOSTLY_DEPENDENT_SHARE = 0.50
STEEP_GRADIENT_HU = 100.0
# Medians need a few voxels; fewer aerated ones than this share of the lung: measure the whole lung.
MIN_AERATED_SHARE = 0.02
_MIN_VOXELS = 50
_MEDIAN_SAMPLE = 2_000_000  # medians of more voxels than this are taken on an even subsample

SUPINE_NOTE = "dependent = posterior, assuming a supine patient"


@dataclass
class Caveat:
    """One reason to doubt the infection figure: ``code`` (stable, for tables), ``message``
    (one plain line for the user) and the measured ``figures`` (plain floats)."""

    code: str
    message: str
    figures: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "figures": dict(self.figures)}


def _median(hu_box: np.ndarray, where: np.ndarray) -> float | None:
    """The median HU of ``hu_box`` where ``where`` (None below a few voxels)."""
    return _median_of(hu_box[where])


def _median_of(values: np.ndarray) -> float | None:
    if values.size < _MIN_VOXELS:
        return None
    if values.size > _MEDIAN_SAMPLE:
        values = values[::values.size // _MEDIAN_SAMPLE]
    return float(np.median(values))


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(float(v), nd)


def lung_figures(hu: np.ndarray, lungs: np.ndarray, infection: np.ndarray | None, spacing) -> dict | None:
    """What ``infection_caveats`` measures, as a dict of plain numbers; None without lung.

    ``hu``, ``lungs`` (labels) and ``infection`` (> 0 = infected) share the (z, y, x) grid;
    ``spacing`` is (z, y, x) mm (for the gradient per cm)."""
    lungs = np.asarray(lungs)
    box = bbox(lungs)
    if box is None:
        return None
    lab = lungs[box]
    hu_box = np.asarray(hu)[box]
    lung = lab > 0
    n_lung = int(np.count_nonzero(lung))
    if infection is None:
        inf = np.zeros(lung.shape, dtype=bool)
    else:
        inf = np.asarray(infection)[box] > 0
        inf &= lung
    n_inf = int(np.count_nonzero(inf))
    aerated = lung & ~inf
    n_aer = n_lung - n_inf
    lung_median = _median(hu_box, lung)
    aerated_median = _median(hu_box, aerated) if n_aer >= MIN_AERATED_SHARE * n_lung else None

    # Per lung and per axial slice: the lung's extent in y in thirds; the aerated lung's HU in
    # the anterior and the posterior third of each lung, gathered over the lungs.
    ny = lab.shape[1]
    yy = np.arange(ny)[None, :]
    inf_dependent = 0
    post_values, ant_values, extents = [], [], []
    for v in (1, 2, 3):  # right, left, any other label (3 and above) as one more lung
        one = lab == v if v < 3 else lab >= v
        occ = one.any(axis=2)  # (z, y)
        rows = occ.any(axis=1)
        if not rows.any():
            continue
        first = occ.argmax(axis=1)
        last = ny - 1 - occ[:, ::-1].argmax(axis=1)
        ext = (last - first + 1).astype(float)
        post_zy = (yy >= first[:, None] + 2.0 * ext[:, None] / 3.0) & rows[:, None]
        ant_zy = (yy < first[:, None] + ext[:, None] / 3.0) & rows[:, None]
        inf_zy = np.count_nonzero(inf & one, axis=2)  # infected voxels per (z, y)
        inf_dependent += int(inf_zy[post_zy].sum())
        one &= aerated
        post_values.append(hu_box[one & post_zy[:, :, None]])
        ant_values.append(hu_box[one & ant_zy[:, :, None]])
        extents.append(ext[rows])
        del one
    post_median = _median_of(np.concatenate(post_values)) if post_values else None
    ant_median = _median_of(np.concatenate(ant_values)) if ant_values else None
    del post_values, ant_values
    gradient = None if post_median is None or ant_median is None else post_median - ant_median
    per_cm = None
    if gradient is not None and extents:
        # the centres of the anterior and posterior thirds lie 2/3 of the extent apart
        mean_ext_cm = float(np.mean(np.concatenate(extents))) * float(spacing[1]) / 10.0
        per_cm = gradient / max(2.0 / 3.0 * mean_ext_cm, 1e-6)

    lung_slices = int(np.count_nonzero(lung.any(axis=(1, 2))))
    inf_slices = int(np.count_nonzero(inf.any(axis=(1, 2))))
    return {
        "lung_voxels": n_lung,
        "infected_pct": 100.0 * n_inf / n_lung if n_lung else 0.0,
        "aerated_median_hu": aerated_median,
        "lung_median_hu": lung_median,
        "dependent_share_pct": 100.0 * inf_dependent / n_inf if n_inf else None,
        "infected_slices_pct": 100.0 * inf_slices / lung_slices if lung_slices else 0.0,
        "anterior_median_hu": ant_median,
        "posterior_median_hu": post_median,
        "ap_gradient_hu": gradient,
        "ap_gradient_hu_per_cm": per_cm,
    }


def infection_caveats(hu: np.ndarray, lungs: np.ndarray, infection: np.ndarray | None, spacing,
                      figures: dict | None = None) -> list[Caveat]:
    """The reasons to doubt the infection figure of ``infection`` inside ``lungs`` on ``hu``.

    ``raised_lung_density``: the aerated lung (the whole lung when almost all of it is marked)
    has a median above ``RAISED_LUNG_HU``, said whenever infection is reported.
    ``extensive_with_dense_lung``: infection on at least ``EXTENSIVE_INFECTION_PCT`` % of the
    lung and the rest above ``DENSE_LUNG_HU``. ``gravity_dependent``: at least
    ``DEPENDENT_SHARE`` of the infection in the posterior third and on at least
    ``DIFFUSE_SLICE_SHARE`` of the lung's slices, or mostly (``MOSTLY_DEPENDENT_SHARE``)
    posterior with a gradient above ``STEEP_GRADIENT_HU``. The last two need more than
    ``MIN_INFECTION_PCT`` % of the lung infected. ``figures``: ``lung_figures``' dict, if at hand.
    """
    f = figures if figures is not None else lung_figures(hu, lungs, infection, spacing)
    if f is None:
        return []
    out: list[Caveat] = []
    pct = f["infected_pct"]
    aer = f["aerated_median_hu"]
    density = aer if aer is not None else f["lung_median_hu"]
    what = "the lung not marked infected" if aer is not None else "the whole lung (almost all of it is marked)"
    raised = density is not None and density > RAISED_LUNG_HU
    if raised:
        out.append(Caveat(
            "raised_lung_density",
            f"diffuse increased lung density (median of {what} {density:.0f} HU; a normal "
            f"inspiration is about -850, above {RAISED_LUNG_HU:.0f} suggests expiration): expiration or "
            "dependent atelectasis? check before reading this as involvement",
            {"lung_median_hu": _r(density), "infected_pct": _r(pct, 2),
             "threshold_hu": RAISED_LUNG_HU}))
    if pct <= MIN_INFECTION_PCT:
        return out
    if not raised and aer is not None and pct >= EXTENSIVE_INFECTION_PCT and aer > DENSE_LUNG_HU:
        out.append(Caveat(
            "extensive_with_dense_lung",
            f"infection marked on {pct:.0f} % of the lung and the rest is dense too (median "
            f"{aer:.0f} HU, normal inspiration about -850): diffuse increased density, expiration? "
            "check before reading this as involvement",
            {"infected_pct": _r(pct, 2), "aerated_median_hu": _r(aer),
             "threshold_pct": EXTENSIVE_INFECTION_PCT, "threshold_hu": DENSE_LUNG_HU}))
    share = f["dependent_share_pct"]
    slices = f["infected_slices_pct"]
    grad = f["ap_gradient_hu"]
    if share is not None:
        diffuse = share >= 100 * DEPENDENT_SHARE and slices >= 100 * DIFFUSE_SLICE_SHARE
        steep = grad is not None and grad > STEEP_GRADIENT_HU and share >= 100 * MOSTLY_DEPENDENT_SHARE
        if diffuse or steep:
            why = (f"on {slices:.0f} % of the lung's slices" if diffuse else
                   f"with a steep anterior-posterior density gradient (+{grad:.0f} HU)")
            out.append(Caveat(
                "gravity_dependent",
                f"infection follows gravity: {share:.0f} % of it in the dependent (posterior) third "
                f"of the lungs, {why} ({SUPINE_NOTE}): dependent atelectasis? check before reading "
                "this as involvement",
                {"dependent_share_pct": _r(share), "infected_slices_pct": _r(slices),
                 "ap_gradient_hu": _r(grad), "ap_gradient_hu_per_cm": _r(f["ap_gradient_hu_per_cm"]),
                 "infected_pct": _r(pct, 2)}))
    return out
