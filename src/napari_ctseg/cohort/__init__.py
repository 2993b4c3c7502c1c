"""Cohorts: many scans on a Dask cluster, the cohort table and its review (Qt-free)."""
