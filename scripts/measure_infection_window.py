"""Estimate the HU window of the 8-bit COVID-SemiSeg JPG slices (they carry no HU).

For each image, the dark grey-level mode (aerated lung) and the bright mode (soft
tissue, below the saturated 250..255 of bone and contrast) are matched with typical HU:
-870 for aerated lung (the expert lung masks of IRCAD patients 1 and 7 have medians of
-858 and -887 HU) and +40 for unenhanced soft tissue. Each image gives the window's
lower and upper HU; the figures across images are printed. The infection model's
window, [-1100, 250] HU, comes from their medians (see napari_ctseg.training.config).

    python scripts/measure_infection_window.py /path/to/data/covid_semiseg_train
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter1d

LUNG_HU, TISSUE_HU = -870.0, 40.0


def main(folder: Path) -> None:
    dark, bright, lows, highs = [], [], [], []
    for f in sorted((folder / "images").glob("*.jpg")):
        a = np.asarray(Image.open(f).convert("L"))
        h = gaussian_filter1d(np.bincount(a.ravel(), minlength=256).astype(float), 2)
        lo = 5 + int(np.argmax(h[5:128]))
        hi = 128 + int(np.argmax(h[128:250]))
        slope = (hi - lo) / (TISSUE_HU - LUNG_HU)  # grey levels per HU
        low = LUNG_HU - lo / slope
        dark.append(lo)
        bright.append(hi)
        lows.append(low)
        highs.append(low + 255 / slope)
    q = [25, 50, 75]
    print(f"{len(lows)} images")
    print(f"dark (lung) mode, grey level, quartiles: {np.percentile(dark, q)}")
    print(f"bright (soft tissue) mode, quartiles:    {np.percentile(bright, q)}")
    print(f"window low HU, quartiles:  {np.percentile(lows, q).round()}")
    print(f"window high HU, quartiles: {np.percentile(highs, q).round()}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
