"""What napari's building of result layers costs the viewer: seconds per Labels layer added (the
first of the session, the later ones) and the event loop's longest stalls meanwhile.

A real viewer (under Xvfb when there is no display: run it with ``xvfb-run -a``) with a
512x512x119 CT-sized image; three 512x512x119 masks added one per pass of the event loop, as
Segment volume adds its results (``segment._add_next_layer``), each followed by 1 s of the
event loop. Printed: each ``add_labels`` call's seconds, and the longest gaps of a 10 ms timer
(``_gui_stall.StallMeter``) over the whole run. Each option is one side of an A/B:

* ``--cold``: without ``_napari/_warm.warm_up`` (which Segment volume and Mask tools run when they
  open: napari's Labels imports loaded, ``gc.freeze``);
* ``--triplanar``: with CT view's linked tri-planar views on (each new layer mirrored into the
  coronal and sagittal views, one mirror per pass of the event loop).

Run: xvfb-run -a .venv/bin/python benchmarks/layers_gui.py [--cold] [--triplanar]

Last runs: see docs/benchmarks.md ("The GUI while segmenting").
"""
from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _gui_stall import StallMeter, settle, spin  # noqa: E402
from _setup import argument_parser, use_source_tree  # noqa: E402

SHAPE = (119, 512, 512)
SPACING = (2.5, 0.7, 0.7)


def main(argv=None) -> int:
    ap = argument_parser(__doc__, data=False)
    ap.add_argument("--cold", action="store_true", help="without the warm-up of _napari/_warm.py")
    ap.add_argument("--triplanar", action="store_true", help="with CT view's linked tri-planar views on")
    args = ap.parse_args(argv)
    use_source_tree()
    import napari
    from qtpy.QtCore import QTimer

    from napari_ctseg._napari._warm import warm_up
    from napari_ctseg._napari.widgets.ct_view import CTViewWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    app = napari.qt.get_qapp()
    if not args.cold:
        t0 = time.perf_counter()
        warm_up()
        print(f"warm-up (when Segment volume or Mask tools opens): {time.perf_counter() - t0:.2f} s")
    rng = np.random.default_rng(0)
    viewer.add_image((rng.normal(40, 30, SHAPE)).astype(np.int16), name="ct", scale=SPACING)
    ct_view = CTViewWidget(viewer)
    viewer.window.add_dock_widget(ct_view, name="CT view")
    if args.triplanar:
        ct_view.set_triplanar(True)
    settle(app, 2.0)
    z, y, x = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    masks = [(((z - 60) / r) ** 2 + ((y - 250) / 150.0) ** 2 + ((x - 200 - 40 * k) / 120.0) ** 2 <= 1)
             .astype(np.uint8) * (k + 1) for k, r in enumerate((40.0, 35.0, 30.0))]
    seconds = []

    def add(k):
        t0 = time.perf_counter()
        viewer.add_labels(masks[k], name=f"mask {k + 1}", scale=SPACING)
        seconds.append(time.perf_counter() - t0)

    with StallMeter() as meter:
        end = time.perf_counter() + 0.3  # ticking before the first layer, so its stall counts
        spin(app, lambda: time.perf_counter() >= end)
        for k in range(len(masks)):
            QTimer.singleShot(0, lambda k=k: add(k))
            end = time.perf_counter() + 1.0
            spin(app, lambda: time.perf_counter() >= end)
    gaps = sorted(meter.gaps.get("run", []), reverse=True)
    print(f"{'cold' if args.cold else 'warm'}{', tri-planar on' if args.triplanar else ''}: "
          f"add_labels {', '.join(f'{s:.2f}' for s in seconds)} s (first, then later ones)")
    print(f"  longest event-loop stalls: {', '.join(f'{g:.0f}' for g in gaps[:6])} ms over {len(gaps)} ticks")
    print(f"[{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, napari {napari.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC]")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
