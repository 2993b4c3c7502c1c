"""``ctseg``: the same jobs as the plugin, headless."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .errors import CTSegError


def _cmd_info(args) -> int:
    from .io import read_scan

    for src in args.scans:
        volume = read_scan(src)
        geo = volume.geometry
        lo, hi = volume.hu_range()
        info = {
            "scan": str(src),
            "name": volume.name,
            "kind": geo.source_kind,
            "source_shape": list(geo.source_shape),
            "source_orientation": "".join(geo.source_axcodes),
            "display_shape_zyx": list(volume.shape),
            "display_orientation": "".join(volume.geometry.display_axcodes_str()),
            "spacing_zyx_mm": [round(s, 4) for s in volume.spacing],
            "hu_range": [lo, hi],
            "dtype": str(volume.hu.dtype),
            "affine": np.round(geo.affine, 4).tolist(),
            "warnings": volume.warnings,
        }
        if volume.series is not None:
            info["series"] = volume.series.label()
            info["other_series"] = [s.label() for s in volume.other_series]
        if args.json:
            print(json.dumps(info))
            continue
        print(f"{info['scan']}")
        print(f"  kind          {info['kind']}")
        print(f"  shape         {'x'.join(map(str, geo.source_shape))} (source i,j,k; "
              f"orientation {info['source_orientation']})")
        print(f"  display       {'x'.join(map(str, volume.shape))} (z,y,x; orientation "
              f"{info['display_orientation']})")
        print(f"  spacing       {' x '.join(f'{s:.4g}' for s in volume.spacing)} mm (z,y,x)")
        print(f"  HU range      {lo:g} .. {hi:g} ({info['dtype']})")
        if volume.series is not None:
            print(f"  series        {info['series']}")
            for other in info["other_series"]:
                print(f"  other series  {other}")
        for w in volume.warnings:
            print(f"  warning       {w}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctseg", description="napari-ctseg from the command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print a scan's shape, spacing, orientation and HU range")
    p.add_argument("scans", nargs="+", help="NIfTI file, DICOM file or DICOM folder")
    p.add_argument("--json", action="store_true", help="one JSON object per scan")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CTSegError as exc:
        print(f"ctseg: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
