"""Click to correct in the viewer: seconds per click from the click to the edit on the layer, and
the longest event-loop stall meanwhile (the robot user of ``interactive.py`` clicking through the
Mask tools' panel, as a user's mouse does: ``ClickPanel.click_at``).

Opens a napari viewer (under Xvfb when there is no display: run it with ``xvfb-run -a``), the
CHAOS 3 CT with the default liver model's mask (post-processed, as Segment volume gives it), the
Mask tools widget with Clicks on; then ``--clicks`` times: the robot's next click from the expert
mask and the layer's current data, the time until the panel is idle again (the edit written,
one undo step), and the 10 ms timer's longest gap (``_gui_stall.StallMeter``) over all clicks, in
three phases: napari adding the click's marker (a ``Points.add``) and drawing it, which happens
before the worker starts; from then until the edit is on the layer (the worker's part: the crop
copied into shared memory, the child's refine, the edit written); napari drawing the edited slice.

Run: xvfb-run -a .venv/bin/python benchmarks/interactive_gui.py [--data ../shared/data] [--clicks 5] [--thread]
     [--strokes N]: scribble strokes instead (Mask tools' Scribble on; the stroke robot of
     ``interactive.py --methods strokes``), the stall from each stroke's end to its edit.
     [--boxes]: one box per plane instead (Mask tools' Box on, on an empty layer; the box robot of
     ``box.py``: the expert liver's widest axial, coronal and sagittal section), the stall from each
     box's end to its edit.
     [--side]: the clicks on CT view's linked tri-planar side views instead, as a real mouse click
     (Qt's, through napari's canvas; Shift for an exclude), the coronal and the sagittal view in turn,
     the cursor first moved to the slice through the click; the click also moves the cursor there,
     so the three views redraw: that is part of the figures.

Last run (2-core development VM, quiet, 2026-12-02 19:44 UTC; liver v3 on CHAOS 3), three runs: per
click median 0.30-0.34 s, max 0.37-0.54 s in the child process; longest stall from click to edit
61-65 ms; napari drawing the edited slice 71-79 ms. --boxes (2026-12-03 09:42 UTC, three runs): per box
median 2.68-4.02 s, stall from the box to the edit 107-122 ms, napari drawing it 196-262 ms. --side
(2026-12-03 14:11 UTC, three runs): per click median 0.31-0.32 s, max 0.41-0.43 s; longest stall
91-95 ms (the mouse click to the marker, the cursor moved and three views redrawn). See
docs/benchmarks.md.
"""
from __future__ import annotations

import datetime
import platform
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _gui_stall import StallMeter, settle, spin  # noqa: E402
from _setup import argument_parser  # noqa: E402
from napari_ctseg.evaluation.robot import box_on, next_click, next_stroke, score  # noqa: E402


def main(argv=None) -> int:
    ap = argument_parser(__doc__)
    ap.add_argument("--case", default="liver_chaos03")
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--thread", action="store_true", help="refine in a thread of this process (for comparison)")
    ap.add_argument("--strokes", type=int, default=0,
                    help="scribble strokes instead of clicks: the stroke robot's (robot.stroke_through), written "
                         "on the scribbles layer as napari's brush writes it")
    ap.add_argument("--side", action="store_true",
                    help="click on the tri-planar coronal and sagittal views (real mouse clicks) instead of the main view")
    ap.add_argument("--boxes", action="store_true",
                    help="boxes instead of clicks: the box robot's axial, coronal and sagittal box around the expert "
                         "liver, each on an empty layer, added to the boxes layer as napari's rectangle tool adds it")
    args = ap.parse_args(argv)

    import napari

    from napari_ctseg.io import read_scan
    from napari_ctseg.segmentation.inference import segment
    from napari_ctseg.training import MASK_FILES, read_mask
    from napari_ctseg._napari.widgets.mask_tools import MaskToolsWidget

    data = Path(args.data)
    vol = read_scan(data / args.case / "ct.nii.gz")
    reference = read_mask(data / args.case / MASK_FILES["liver"], vol, "liver")
    res = segment(vol, ["liver"], "cpu")
    mask = np.ascontiguousarray(res.masks["liver"])
    labels = [1]
    viewer = napari.Viewer(show=True)
    image = viewer.add_image(np.asarray(vol.hu), name="ct", scale=vol.spacing)
    layer = viewer.add_labels(mask, name="liver", scale=image.scale)
    widget = MaskToolsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    app = napari.qt.get_qapp()
    settle(app, 2.0)
    tri = None
    if args.side:
        from napari_ctseg._napari.widgets.ct_view import CTViewWidget

        ct_view = CTViewWidget(viewer)
        viewer.window.add_dock_widget(ct_view, name="CT view", area="right")
        ct_view.set_triplanar(True)
        tri = ct_view.triplanar
        settle(app, 2.0)
    widget.clicks.set_active(True)
    if args.thread:
        widget.clicks.process.close()
        widget.clicks.process = None
    print(f"refine runs in {'a thread of the viewer' if widget.clicks.process is None else 'a warm child process'}")
    print(f"{args.case}: liver {res.versions.get('liver')}, {mask.shape} at {tuple(round(s, 2) for s in vol.spacing)} mm, "
          f"Dice {score(mask, reference, labels)['dice']:.4f} before clicking")
    seconds, clicked = [], set()
    phase = {"now": "waiting"}  # the robot's own work, the worker's, the edit written on the layer
    panel, done = widget.clicks, widget.clicks._done

    writes = []

    def timed_done(*a, **k):
        t = time.perf_counter()
        try:
            return done(*a, **k)
        finally:
            writes.append(time.perf_counter() - t)
            phase["now"] = "drawing"  # napari draws the changed slice on the next passes of the loop

    panel._done = timed_done
    started = panel._next

    def timed_next(*a, **k):  # the marker is drawn; the worker starts now
        try:
            return started(*a, **k)
        finally:
            phase["next_ran"] = True

    panel._next = timed_next
    if args.strokes:
        return strokes(args, app, viewer, widget, layer, reference, labels, vol, phase, writes)
    if args.boxes:
        return boxes(app, viewer, widget, reference, vol, phase, writes)
    with StallMeter(lambda: phase["now"]) as meter:
        for n in range(1, args.clicks + 1):
            nxt = next_click(reference, np.asarray(layer.data), labels, vol.spacing, clicked)
            if nxt is None:
                break
            label, click, size = nxt
            clicked.add((label, click.include, click.zyx))
            view = ("coronal", "sagittal")[n % 2] if tri is not None else None
            if view is None:
                viewer.dims.set_point(0, click.zyx[0] * vol.spacing[0])
            else:
                tri.set_cursor_point(tuple(v * s for v, s in zip(click.zyx, vol.spacing)))
            settle(app, 0.3)  # the robot's own work and the slice change are not the click's: let them tick
            # settle() sleeps 50 ms between its passes: tick a moment without sleeping, so that the
            # last tick before the click is fresh and no part of that sleep counts as the click's stall
            until = time.perf_counter() + 0.05
            spin(app, lambda: time.perf_counter() >= until)
            t0 = time.perf_counter()
            # napari adds the marker (a Points.add) and draws it in one pass of the event loop
            # before the worker starts: its own cost, shown apart from the worker's
            phase["now"], phase["next_ran"] = "marker", False
            if view is None:
                widget.clicks.click_at(click.zyx, click.include)
            else:
                side_click(tri, view, click, vol.spacing)
            spin(app, lambda: phase["next_ran"])
            phase["now"] = "computing"
            spin(app, lambda: not widget.clicks.busy)
            seconds.append(time.perf_counter() - t0)
            settle(app, 0.3)
            phase["now"] = "waiting"
            if view is not None and tuple(np.asarray(panel.points.data[-1], int)) != tuple(click.zyx):
                print(f"  (the mouse click landed on {tuple(np.asarray(panel.points.data[-1], int))}, not {click.zyx})")
            where = f" on the {view} view" if view else ""
            print(f"  click {n}: {click.kind} at {click.zyx}{where} ({size} voxels): {seconds[-1]:.2f} s to the edit on the "
                  f"layer (core {widget.clicks.seconds[-1]:.2f} s), Dice {score(np.asarray(layer.data), reference, labels)['dice']:.4f}")
    report(meter, seconds, writes, "click", (("marker", "napari adding the click's marker and drawing it"),
                                             ("computing", "from the marker to the edit (the worker)"),
                                             ("drawing", "napari drawing the edited slice")), goal=" (goal <= 1 s)")
    viewer.close()
    return 0


def side_click(tri, view: str, click, spacing) -> None:
    """A real mouse click (Qt's) on voxel ``click.zyx`` of a tri-planar side view, Shift for an exclude."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    from napari_ctseg._napari.widgets._crosshair import camera as camera_of

    model, native = tri.models[view], tri.qt_viewers[view].canvas.native
    rows, cols = model.dims.displayed
    camera = camera_of(model)
    px = native.width() / 2 + (click.zyx[cols] * spacing[cols] - camera.center[-1]) * camera.zoom
    py = native.height() / 2 + (click.zyx[rows] * spacing[rows] - camera.center[-2]) * camera.zoom
    shift = Qt.KeyboardModifier.NoModifier if click.include else Qt.KeyboardModifier.ShiftModifier
    QTest.mouseClick(native, Qt.MouseButton.LeftButton, shift, QPoint(int(round(px)), int(round(py))))


def report(meter, seconds, writes, what: str, phases, goal: str = "") -> None:
    """Print the seconds per step, the longest write on the layer and each phase's stalls."""
    print(f"per {what} in the GUI: median {np.median(seconds):.2f} s, max {max(seconds):.2f} s{goal}")
    print(f"  writing each edit on the layer (the event loop, one undo step): max {1000 * max(writes):.0f} ms")
    for name, said in phases:
        fig = meter.figures(name)
        if fig["ticks"]:
            print(f"  longest event-loop stall, {said}: {fig['max_stall_ms']:.0f} ms, 99th percentile "
                  f"{fig['p99_stall_ms']:.0f} ms over {fig['ticks']} ticks (goal <= 100 ms)")
    print(f"[{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC]")


def strokes(args, app, viewer, widget, layer, reference, labels, vol, phase, writes) -> int:
    """``--strokes``: each step the stroke robot's stroke through the largest error, written on the
    scribbles layer (``data_setitem``, which napari reports as a paint, as its brush does at the
    end of a stroke); the time until the panel is idle, and the stalls from the stroke's end to
    the edit and while napari draws it."""
    widget.clicks.set_scribbling(True)
    scribbles = widget.clicks.scribbles
    seconds, stroked = [], set()
    with StallMeter(lambda: phase["now"]) as meter:
        for n in range(1, args.strokes + 1):
            chosen = next_stroke(reference, np.asarray(layer.data), labels, vol.spacing, stroked)
            if chosen is None:
                break
            r, voxels = chosen
            widget.clicks.include_radio.setChecked(r.include)
            widget.clicks.exclude_radio.setChecked(not r.include)
            viewer.dims.set_point(0, int(voxels[0][0]) * vol.spacing[0])
            settle(app, 0.3)
            until = time.perf_counter() + 0.05
            spin(app, lambda: time.perf_counter() >= until)
            t0 = time.perf_counter()
            phase["now"] = "computing"
            scribbles.data_setitem(tuple(voxels.T), 1 if r.include else 2)
            spin(app, lambda: not widget.clicks.busy)
            seconds.append(time.perf_counter() - t0)
            settle(app, 0.3)
            phase["now"] = "waiting"
            print(f"  stroke {n}: {'include' if r.include else 'exclude'} of {len(voxels)} voxels ({r.size} voxels "
                  f"of error): {seconds[-1]:.2f} s to the edit on the layer, Dice "
                  f"{score(np.asarray(layer.data), reference, labels)['dice']:.4f}")
    report(meter, seconds, writes, "stroke", (("computing", "from the stroke's end to the edit"),
                                              ("drawing", "napari drawing the edit")))
    viewer.close()
    return 0


def boxes(app, viewer, widget, reference, vol, phase, writes) -> int:
    """``--boxes``: on an empty layer each time, the box robot's box on each plane added to the
    boxes layer (``add_rectangles``, which reports it as the rectangle tool does at the mouse's
    release); the time until the panel is idle, the stalls from the box's end to the edit and
    while napari draws it."""
    structure = np.asarray(reference) == 1
    seconds = []
    with StallMeter(lambda: phase["now"]) as meter:
        for axis, plane in enumerate(("axial", "coronal", "sagittal")):
            layer = viewer.add_labels(np.zeros(structure.shape, np.uint8), name=f"box {plane}",
                                      scale=tuple(vol.spacing))
            widget.layer_combo.setCurrentText(layer.name)
            widget.clicks.set_boxing(True)
            shapes = widget.clicks.boxes
            lo, hi = box_on(structure, axis)
            a, b = [i for i in range(3) if i != axis]
            corners = []
            for u, v in ((lo[a], lo[b]), (lo[a], hi[b]), (hi[a], hi[b]), (hi[a], lo[b])):
                c = list(lo)
                c[a], c[b] = u, v
                corners.append(c)
            viewer.dims.set_point(axis, lo[axis] * vol.spacing[axis])
            settle(app, 0.3)
            until = time.perf_counter() + 0.05
            spin(app, lambda: time.perf_counter() >= until)
            t0 = time.perf_counter()
            phase["now"] = "computing"
            shapes.add_rectangles(np.asarray(corners, float))
            spin(app, lambda: not widget.clicks.busy)
            seconds.append(time.perf_counter() - t0)
            settle(app, 0.3)
            phase["now"] = "waiting"
            print(f"  {plane} box {list(lo)}..{list(hi)}: {seconds[-1]:.2f} s to the edit on the layer (core "
                  f"{widget.clicks.seconds[-1]:.2f} s), Dice {score(np.asarray(layer.data), structure.astype(np.uint8), [1])['dice']:.4f}")
            widget.clicks.set_boxing(False)
    report(meter, seconds, writes, "box", (("computing", "from the box's end to the edit"),
                                           ("drawing", "napari drawing the edit")))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
