"""The cohort table and its summary (Qt-free).

One row per scan, written to ``OUT/cohort.csv`` and ``OUT/cohort.parquet`` (temporary
file, then rename) after every finished scan, so an interrupted run keeps what it did
(``write_table``, ``read_table``). A scan run again keeps its volumes from before
(``with_previous``, ``volume_changes``). ``cohort_report`` summarises a cohort folder:
``cohort_summary.csv`` (median and quartiles per figure) and ``cohort_report.png``.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from napari_ctseg.errors import CTSegError

TABLE_CSV = "cohort.csv"
TABLE_PARQUET = "cohort.parquet"
REPORT_PNG = "cohort_report.png"
REPORT_CSV = "cohort_summary.csv"


def _atomic(path: Path, write) -> None:
    """``write(temporary path)``, then the file replaces ``path`` (see ``_files``)."""
    from napari_ctseg._files import replaced_atomically

    with replaced_atomically(path, path.suffix) as tmp:
        write(tmp)


def write_table(out_dir, rows: Iterable[dict]):
    """``cohort.csv`` and ``cohort.parquet`` from ``rows`` (each written atomically); the DataFrame."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(list(rows))
    if len(table):
        front = [c for c in ("scan_id", "status", "review_score", "path") if c in table]
        table = table[front + [c for c in table.columns if c not in front]]
        table = table.sort_values("scan_id", kind="stable").reset_index(drop=True)
    _atomic(out_dir / TABLE_CSV, lambda p: table.to_csv(p, index=False))
    _atomic(out_dir / TABLE_PARQUET, lambda p: table.to_parquet(p, index=False))
    return table


def read_table(out_dir):
    """The cohort table in ``out_dir`` (Parquet, else CSV); an empty DataFrame when there is none."""
    import pandas as pd

    out_dir = Path(out_dir)
    if (out_dir / TABLE_PARQUET).is_file():
        return pd.read_parquet(out_dir / TABLE_PARQUET)
    if (out_dir / TABLE_CSV).is_file():
        return pd.read_csv(out_dir / TABLE_CSV)
    return pd.DataFrame()


def rows_by_scan(table) -> dict[str, dict]:
    """The rows of a cohort table as {scan id: row}, without its empty cells."""
    if not len(table):
        return {}
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    return {r["scan_id"]: {k: v for k, v in r.items() if v is not None} for r in records}


def with_previous(row: dict, old: dict | None) -> dict:
    """``row`` with what changed since the last successful run of the same scan: for each
    volume column ``<x>_ml`` (and ``lung_involvement_pct``) the value before as ``<x>_before``,
    and ``model_key_before``; a scan seen for the first time (or failed before) gets none."""
    if not old or old.get("status") != "ok" or row.get("status") != "ok":
        return row
    for col, value in old.items():
        if (col.endswith("_ml") or col == "lung_involvement_pct") and not col.endswith("_before"):
            row[f"{col}_before"] = value
    row["model_key_before"] = old.get("model_key", "")
    return row


def volume_changes(row: dict) -> dict[str, float]:
    """{volume column: new - before} for a re-run row (see ``with_previous``)."""
    out = {}
    for col in row:
        before = row.get(f"{col}_before")
        if col.endswith("_ml") and before is not None:
            try:
                new, old = float(row[col]), float(before)
            except (TypeError, ValueError):
                continue
            if new == new and old == old:
                out[col] = new - old
    return out


def _summary_columns(table) -> list[str]:
    cols = [c for c in table.columns if c.endswith("_ml") and not c.startswith("infection_")]
    cols += [c for c in ("lung_involvement_pct", "review_score", "seconds") if c in table]
    return cols


def cohort_summary(table):
    """Per figure (volumes in mL, % of lungs involved, review score, seconds): scans with a
    value, median, first and third quartile, minimum and maximum (DataFrame, one row each)."""
    import pandas as pd

    ok = table[table["status"] == "ok"] if "status" in table else table
    rows = []
    for c in _summary_columns(table):
        v = pd.to_numeric(ok[c], errors="coerce").dropna()
        if not len(v):
            rows.append({"figure": c, "n": 0})
            continue
        rows.append({"figure": c, "n": int(len(v)), "median": float(v.median()), "q1": float(v.quantile(0.25)),
                     "q3": float(v.quantile(0.75)), "min": float(v.min()), "max": float(v.max())})
    return pd.DataFrame(rows, columns=["figure", "n", "median", "q1", "q3", "min", "max"])


def cohort_report(out_dir) -> tuple[str, object, Path]:
    """The summary of a cohort folder: (text, summary DataFrame, PNG path).

    Writes ``cohort_summary.csv`` and ``cohort_report.png`` (% of lungs involved per scan and
    each target's volume across the cohort) into ``out_dir``.
    """
    out_dir = Path(out_dir)
    table = read_table(out_dir)
    if not len(table):
        raise CTSegError(f"{out_dir}: no cohort table here ({TABLE_CSV}); run 'ctseg cohort run' first")
    summary = cohort_summary(table)
    _atomic(out_dir / REPORT_CSV, lambda p: summary.to_csv(p, index=False))
    png = out_dir / REPORT_PNG
    _atomic(png, lambda p: _plot(table, p))
    counts = table["status"].value_counts().to_dict()
    lines = [f"{len(table)} scans: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    for r in summary.itertuples():
        if r.n:
            lines.append(f"  {r.figure:32s} n={r.n:<5d} median {r.median:10.2f}  IQR {r.q1:.2f}..{r.q3:.2f}")
    failed = table[table["status"] != "ok"]
    for r in failed.head(10).itertuples():
        lines.append(f"  failed {r.scan_id}: {r.error}")
    if "review_score" in table:
        top = table[table["status"] == "ok"].sort_values("review_score", ascending=False).head(5)
        if len(top):
            lines.append("  review first: " + ", ".join(f"{r.scan_id} ({r.review_score:.3f})"
                                                        for r in top.itertuples()))
    lines.append(f"  wrote {out_dir / REPORT_CSV} and {png}")
    return "\n".join(lines), summary, png


def _plot(table, path: Path) -> None:
    """% of lungs involved per scan (sorted bars), then one box plot (with the scans as dots)
    per target's volume in mL: each on its own axis, their scales differ."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import pandas as pd

    ok = table[table["status"] == "ok"] if "status" in table else table
    vol_cols = [c for c in ("lungs_ml", "liver_ml", "infection_ml") if c in ok]
    fig, axes = plt.subplots(1, 1 + len(vol_cols), figsize=(4.2 + 2.4 * len(vol_cols), 4.2), dpi=100,
                             gridspec_kw={"width_ratios": [2.2] + [1] * len(vol_cols)}, squeeze=False)
    ax = axes[0, 0]
    pct = pd.to_numeric(ok.get("lung_involvement_pct", pd.Series(dtype=float)), errors="coerce").dropna()
    if len(pct):
        pct = pct.sort_values()
        ax.bar(range(len(pct)), pct.to_numpy(), color="#c0504d", width=0.9)
        ax.set_xlabel(f"scans, sorted ({len(pct)})")
        ax.set_xticks([])
    else:
        ax.text(0.5, 0.5, "no infection figures", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("lung involved by infection (%)")
    ax.set_title("% of lungs involved")
    for ax, col in zip(axes[0, 1:], vol_cols):
        d = pd.to_numeric(ok[col], errors="coerce").dropna().to_numpy()
        if len(d):
            ax.boxplot([d], widths=0.5, showfliers=False)
            ax.scatter(1 + np.random.default_rng(0).uniform(-0.12, 0.12, len(d)), d, s=10, alpha=0.6,
                       color="#1f77b4", zorder=3)
        ax.set_xticks([1], [col.removesuffix("_ml")])
        ax.set_ylabel("mL")
        ax.set_title(f"{col.removesuffix('_ml')} volume")
    fig.suptitle(f"cohort: {len(table)} scans, {len(ok)} segmented")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


__all__ = ["TABLE_CSV", "TABLE_PARQUET", "REPORT_PNG", "REPORT_CSV", "write_table", "read_table", "rows_by_scan",
           "with_previous", "volume_changes", "cohort_summary", "cohort_report"]
