"""``ctseg``: the same jobs as the plugin, headless.

``parser`` builds the command line and runs a command (``main``, the console script);
``scans`` holds the commands on scans (info, segment, evaluate, refine, cohort),
``models`` those that make and manage models (train, finetune, models), ``common``
what they share.
"""
from napari_ctseg.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
