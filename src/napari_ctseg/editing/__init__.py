"""Correcting masks: the editing tools, click to correct, and the corrections store (Qt-free)."""
