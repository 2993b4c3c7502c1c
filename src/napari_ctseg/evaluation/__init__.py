"""Measuring masks: agreement metrics and evaluation against expert masks (Qt-free)."""
