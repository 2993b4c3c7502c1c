"""The napari plugin layer: reader and writer hooks, sample data, dock widgets.

Only this package imports napari or Qt; it gathers what the user chose, calls the core,
and shows the result.
"""
