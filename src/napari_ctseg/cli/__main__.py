"""``python -m napari_ctseg.cli``: the ``ctseg`` command."""
import sys

from napari_ctseg.cli.parser import main

if __name__ == "__main__":
    sys.exit(main())
