"""What each data folder is, for the card: where it comes from, its license, what to cite
(``datasets.json``, by folder-name prefix: the first prefix a case's folder starts with)."""
from __future__ import annotations

import json
from pathlib import Path


def _load_datasets() -> dict[str, dict[str, str]]:
    """``datasets.json`` next to this module, its prefixes in the file's order."""
    return json.loads(Path(__file__).with_name("datasets.json").read_text(encoding="utf-8"))


DATASETS: dict[str, dict[str, str]] = _load_datasets()


def _dataset_of(case: str) -> dict[str, str] | None:
    folder = case.split("/")[0]
    for prefix, info in DATASETS.items():
        if folder.startswith(prefix):
            return info
    return None


def _data_record(names: list[str]) -> list[dict[str, str]]:
    out = []
    for n in names:
        info = _dataset_of(n) or {}
        out.append({"case": n, **{k: v for k, v in info.items() if k != "cite"}})
    return out


def _citations(names: list[str]) -> list[str]:
    cites: list[str] = []
    for n in names:
        info = _dataset_of(n)
        if info and info["cite"] not in cites:
            cites.append(info["cite"])
    return cites
