"""Open napari with the sample full chest CT and the plugin's widgets (``scripts/demo.sh``).

With ``--screenshot PATH`` (no display: the script runs under Xvfb) it also runs Segment
volume on the sample, saves a screenshot of the window with the masks, and exits.
"""
from __future__ import annotations

import argparse

_DEMO_WIDGETS = ["CT view", "Segment volume", "Mask tools", "Fine-tune", "Models"]
_TABBED = {"Fine-tune", "Models"}  # tabbed with the dock before them: the right side stays readable


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="napari-ctseg demo")
    parser.add_argument("--screenshot", help="segment the sample, save a screenshot of the window here, exit")
    args = parser.parse_args(argv)

    import napari

    from napari_ctseg._napari._compat import qt_window

    viewer = napari.Viewer(title="napari-ctseg demo")
    viewer.open_sample("napari-ctseg", "chest_ct")
    widgets = {}
    for name in _DEMO_WIDGETS:
        try:
            _, widgets[name] = viewer.window.add_plugin_dock_widget("napari-ctseg", name,
                                                                    tabify=name in _TABBED)
        except (KeyError, ValueError):  # a widget not in this version of the manifest
            pass
    if args.screenshot:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication

        qt_window(viewer).resize(1500, 950)
        segment = widgets.get("Segment volume")

        def shoot():
            if segment is not None and segment.worker is not None:
                QTimer.singleShot(500, shoot)
                return
            qt_window(viewer).grab().save(args.screenshot)
            print(f"screenshot saved to {args.screenshot}")
            if segment is not None and segment.result is not None:
                print(segment.result.report())
            viewer.close()
            QApplication.instance().quit()

        def run():
            if segment is not None and segment.run_button.isEnabled():
                segment.start()
            QTimer.singleShot(1000, shoot)

        QTimer.singleShot(2000, run)
    napari.run()


if __name__ == "__main__":
    main()
