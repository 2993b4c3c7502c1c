"""Open napari with the sample CT and the plugin's widgets (``scripts/demo.sh``)."""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="napari-ctseg demo")
    parser.add_argument("--screenshot", help="save a screenshot of the window here and exit")
    args = parser.parse_args(argv)

    import napari

    viewer = napari.Viewer(title="napari-ctseg demo")
    viewer.open_sample("napari-ctseg", "sample_ct")
    for widget in _DEMO_WIDGETS:
        try:
            viewer.window.add_plugin_dock_widget("napari-ctseg", widget)
        except (KeyError, ValueError):  # a widget not in this version of the manifest
            pass
    if args.screenshot:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication

        def shoot():
            viewer.window._qt_window.grab().save(args.screenshot)
            print(f"screenshot saved to {args.screenshot}")
            viewer.close()
            QApplication.instance().quit()

        viewer.window._qt_window.resize(1500, 950)
        QTimer.singleShot(3000, shoot)
    napari.run()


_DEMO_WIDGETS = ["CT view", "Segment volume", "Mask tools"]

if __name__ == "__main__":
    main()
