"""The click-to-correct benchmark's robot user (benchmarks/interactive.py) on a small synthetic volume."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "interactive.py"


@pytest.fixture(scope="module")
def interactive():
    spec = importlib.util.spec_from_file_location("benchmark_interactive", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    sys.path.insert(0, str(BENCH.parent))  # as when it runs: its own folder first (for _setup)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH.parent))
    yield module
    sys.modules.pop(spec.name, None)


def ellipsoid(shape, centre, radii):
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 \
        + ((x - centre[2]) / radii[2]) ** 2 <= 1


def test_deepest_point_is_inside_on_the_largest_cross_section(interactive):
    region = np.zeros((10, 30, 30), bool)
    region[2:8, 5:25, 10:14] = True  # a slab: its largest planes are the sagittal ones
    z, y, x = interactive.deepest_point(region, (2.0, 1.0, 1.0))
    assert region[z, y, x] and 4 <= z <= 5 and 14 <= y <= 15


def test_robot_user_clicks_raise_dice(interactive):
    shape, spacing = (32, 56, 56), (2.0, 1.0, 1.0)
    organ = ellipsoid(shape, (16, 28, 28), (9, 18, 18))  # a ball of radius 18 mm
    rng = np.random.default_rng(0)
    hu = (np.where(organ, 60, -100) + rng.normal(0, 12, shape)).astype(np.int16)
    auto = np.roll(organ, 4, axis=2)  # the automatic mask, 4 mm off to one side ...
    auto[:11] = False  # ... and missing its top cap (the organ spans z 7..25)
    auto = auto.astype(np.uint8)
    given = auto.copy()
    run = interactive.robot_user(hu, auto, organ.astype(np.uint8), [1], spacing, n_clicks=3)
    assert np.array_equal(auto, given)  # the automatic mask is not modified
    assert len(run.clicks) == 3 and len(run.dice) == 4
    assert run.dice_after(3) > run.dice_after(0) + 0.02
    first = run.clicks[0]
    assert first["kind"] in ("include", "exclude") and first["region_voxels"] > 0
    assert run.noc(run.dice_after(0), 3) == 0 and run.noc(1.01, 3) is None


def test_robot_strokes_raise_dice_and_stroke_through_the_largest_error(interactive):
    shape, spacing = (32, 56, 56), (2.0, 1.0, 1.0)
    organ = ellipsoid(shape, (16, 28, 28), (9, 18, 18))
    rng = np.random.default_rng(0)
    hu = (np.where(organ, 60, -100) + rng.normal(0, 12, shape)).astype(np.int16)
    from scipy import ndimage

    from napari_ctseg.evaluation.robot import stroke_through

    inner = np.zeros((1, 7, 7), bool)
    inner[0, 1:6, 1:6] = True
    auto = ndimage.binary_erosion(organ, inner).astype(np.uint8)  # 2-3 mm short all round, in-plane
    region = organ & ~auto.astype(bool)
    stroke = stroke_through(region, spacing)
    assert len(stroke) > 40 and region[tuple(stroke.T)].all()  # along the ring, on one plane
    assert len(np.unique(stroke[:, 0])) == 1
    run = interactive.robot_strokes(hu, auto, organ.astype(np.uint8), [1], spacing, n_strokes=2)
    assert len(run.clicks) >= 1 and run.clicks[0]["kind"] == "include" and run.clicks[0]["clicks"] >= 1
    assert run.dice_after(1) > run.dice_after(0) + 0.05
