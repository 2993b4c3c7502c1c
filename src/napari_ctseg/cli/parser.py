"""``ctseg``'s command line: the parser of every command and ``main``, which runs one and
turns an error into one line (the commands are in ``scans`` and ``models``)."""
from __future__ import annotations

import argparse
import sys

from napari_ctseg.cli.models import cmd_finetune, cmd_models, cmd_train
from napari_ctseg.cli.scans import (cmd_cohort_report, cmd_cohort_run, cmd_evaluate, cmd_info, cmd_refine,
                                    cmd_segment)
from napari_ctseg.errors import CTSegError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctseg", description="napari-ctseg from the command line",
                                     epilog="--debug (anywhere): show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="print a scan's shape, spacing, orientation and HU range")
    p.add_argument("scans", nargs="+", help="NIfTI file, DICOM file or DICOM folder")
    p.add_argument("--json", action="store_true", help="one JSON object per scan")
    p.set_defaults(func=cmd_info)

    from napari_ctseg.models.registry import TARGETS

    # Where models are found, for the commands that use them.
    weights = argparse.ArgumentParser(add_help=False)
    weights.add_argument("--weights", action="append", metavar="DIR",
                         help="also look for model versions in DIR/<target>/<version>/ (searched first; "
                              "then $CTSEG_WEIGHTS_DIR, your fine-tuned versions, the bundled ones)")

    p = sub.add_parser("train", help="train a target's model on CT with expert masks",
                       description="Train a model and write model.pt and card.json into --out. "
                                   "The checkpoint kept is the best on the validation cases of "
                                   "the target's split (napari_ctseg/models/splits.json).")
    p.add_argument("--target", required=True, choices=TARGETS)
    p.add_argument("--data", required=True, help="data folder (one subfolder per case)")
    p.add_argument("--out", required=True, help="new folder for model.pt and card.json, e.g. weights/lungs/v2")
    p.add_argument("--epochs", type=int, default=None, help="default: the target's default")
    p.add_argument("--config", default=None,
                   help="the run's whole settings from a JSON file: a model card (its training.config, "
                        "to train an older version's recipe again) or a bare config (default: the "
                        "target's newest recipe)")
    p.add_argument("--split", default=None,
                   help="the cases from a JSON file: a model card (its training.split) or a split "
                        "like those in splits.json (default: the target's split in splits.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--version", default=None, help="version name for the card (default: --out's name)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.add_argument("--json", action="store_true", help="print the model card at the end")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("segment", parents=[weights], help="segment lungs, liver and infection; write masks on the scan's geometry")
    p.add_argument("scans", nargs="+", help="NIfTI file, DICOM file or folder, or a folder of scans")
    p.add_argument("--targets", default="lungs,liver,infection", help="comma-separated: lungs,liver,infection")
    p.add_argument("--out", required=True, help="output folder: <target>.nii.gz, <target>.dcm with --format seg, "
                   "rtstruct.dcm with --format rtstruct (one subfolder per scan when several)")
    p.add_argument("--format", default="nifti", choices=["nifti", "seg", "rtstruct"],
                   help="nifti: <target>.nii.gz; seg: <target>.dcm, a DICOM SEG referencing the scan's DICOM series; "
                        "rtstruct: rtstruct.dcm, one RT Structure Set with every target's ROIs on that series "
                        "(seg and rtstruct: the scan must be DICOM, with a Frame of Reference UID)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", action="append", metavar="TARGET=VERSION", help="model version per target")
    p.add_argument("--json", action="store_true", help="one JSON object per scan")
    p.set_defaults(func=cmd_segment)
    p = sub.add_parser("evaluate", parents=[weights], help="score a model against expert masks: Dice, IoU, HD95, ASD per case",
                       description="Predict every case of --data with the target's model, write the "
                                   "predictions into --predictions-out and compare them with the expert "
                                   "masks. Layouts: <case>/ct.nii.gz with <case>/<target>.nii.gz "
                                   "(volumes), or images/<name>.jpg|png with masks/<name>.png (slices, "
                                   "infection only; distances in pixels).")
    p.add_argument("--target", required=True, help="a target the models are for, e.g. lungs")
    p.add_argument("--data", required=True, help="data folder (see the layouts above)")
    p.add_argument("--predictions-out", required=True, help="folder for the predicted masks")
    p.add_argument("--model", default=None, metavar="VERSION", help="model version (default: the active one)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cases", default=None, help="comma-separated case names (default: every case)")
    p.add_argument("--split", default=None, help="the cases of this split of models/splits.json, e.g. validation")
    p.add_argument("--json", action="store_true", help="one JSON object with every figure")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("finetune", parents=[weights], help="fine-tune a model on corrected masks; a new version, active only if better",
                       description="Fine-tune TARGET's model on scans and their corrected masks (NIfTI on "
                                   "each scan's grid). The new version goes to your user data folder; it "
                                   "becomes active only when it beats the base on held-aside corrected "
                                   "slices and is no more than 0.005 Dice worse on the validation cases "
                                   "(the base's, from --data; otherwise the slices you left unchanged).")
    p.add_argument("--target", required=True, help="a target the models are for, e.g. liver")
    p.add_argument("--scans", nargs="+", default=None, help="CT scans (NIfTI file, DICOM file or folder)")
    p.add_argument("--masks", nargs="+", default=None, help="the corrected masks, one per scan, same order")
    p.add_argument("--changed-slices", nargs="+", default=None, metavar="Z,Z-Z",
                   help="per scan, the display z slices you corrected (default: where the base model "
                        "disagrees with the mask)")
    p.add_argument("--from-store", action="store_true",
                   help="use the corrections saved from napari (Mask tools > Save corrected mask)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default 10")
    p.add_argument("--batch-size", type=int, default=None, help="default 8")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4)")
    p.add_argument("--base", default=None, metavar="VERSION", help="base version (default: the active one)")
    p.add_argument("--data", default=None, help="the base model's training data folder, for replay and "
                                                "validation (default: $CTSEG_DATA_DIR)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--version", default=None, help="name of the new version (default: <base>-ftN)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-promote", action="store_true", help="keep the new version as a candidate")
    p.add_argument("--json", action="store_true", help="one JSON object with the figures")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("models", parents=[weights], help="list model versions, choose the active one, remove fine-tuned ones",
                       description="list: one line per version (target, version, source, date, validation "
                                   "Dice; * marks the active one). use T V: make V the active version of T "
                                   "(also to roll back). remove T V: delete one of your fine-tuned versions "
                                   "(bundled versions cannot be removed). derive T V --out DIR --definition "
                                   "FILE.json: a new version with V's network and the card fields in FILE "
                                   "(postprocess, display, requires, inputs; and notes) replaced.")
    p.add_argument("action", choices=["list", "use", "remove", "derive"])
    p.add_argument("target", nargs="?", help="lungs, liver, infection, or another target of --weights")
    p.add_argument("version", nargs="?")
    p.add_argument("--json", action="store_true", help="list: one JSON object per version")
    p.add_argument("--out", default=None, help="derive: the new version's folder, e.g. weights/infection/v3")
    p.add_argument("--definition", default=None, help="derive: a JSON file with the card fields to replace")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("refine", parents=[weights], help="correct a mask with include/exclude clicks, in 3D around each",
                       description="Apply include/exclude clicks in order to a mask's labels; each "
                                   "re-segments the mask in 3D around the click: with a guidance-aware "
                                   "version of the target (its card says it takes clicks) its network, "
                                   "given the mask and the clicks (napari_ctseg.editing.refine_model), else "
                                   "a random walker on the HU seeded by the click and the mask "
                                   "(napari_ctseg.editing.refine). The "
                                   "mask is on the scan's grid; the output is written on the scan's "
                                   "exact geometry, as ctseg segment writes masks.")
    p.add_argument("scan", help="NIfTI file, DICOM file or folder")
    p.add_argument("--target", required=True, help="the mask's target (its card gives the labels), e.g. liver")
    p.add_argument("--mask", required=True, help="the mask to correct (NIfTI on the scan's grid)")
    p.add_argument("--clicks", required=True, metavar="CLICKS.json",
                   help='a JSON list of {"ijk": [i, j, k], "label": "include" | "exclude"} in the scan\'s '
                        "own voxel indices (source i,j,k of ctseg info; nibabel's array order for NIfTI); "
                        '{"stroke": [[i, j, k], ...], "label": ...} is a scribble stroke, {"box": [[i, j, k], '
                        "[i, j, k]]} a box around a structure to add (two opposite corners; equal on one index "
                        'for a box on a slice; with "label": "exclude", to take out of the label)')
    p.add_argument("--out", required=True, help="the corrected mask, .nii or .nii.gz")
    p.add_argument("--label", type=int, default=None,
                   help="the label value every click refines (default: the target's only label; for a target of "
                        "several, each click refines the label it is on, or for an include on background "
                        "the label nearest to it, within 50 mm)")
    p.add_argument("--method", choices=("auto", "model", "classical"), default="auto",
                   help="model: the guidance-aware version's network; classical: the random walker; auto "
                        "(default): the model when the version takes clicks")
    p.add_argument("--version", default=None, help="the target's version (default: the active one)")
    p.add_argument("--json", action="store_true", help="one JSON object with every click's figures")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("cohort", help="segment a cohort of scans on a Dask cluster; summarise it",
                       description="Segment many scans on a local Dask cluster or an existing one, one "
                                   "row per scan in OUT/cohort.csv and cohort.parquet; running again "
                                   "skips scans done with the same input and model versions.")
    csub = p.add_subparsers(dest="cohort_command", required=True)
    c = csub.add_parser("run", parents=[weights],
                        help="segment every scan of SRC (files, folders, CSV of paths) into --out")
    c.add_argument("sources", nargs="+", metavar="SRC",
                   help="NIfTI file, DICOM file or folder, a folder searched recursively, or a CSV of paths")
    c.add_argument("--out", required=True, help="cohort folder: <scan id>/<target>.nii.gz, cohort.csv, cohort.parquet")
    c.add_argument("--targets", default="lungs,liver,infection", help="comma-separated: lungs,liver,infection")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="an existing Dask scheduler, e.g. tcp://node:8786 (default: a local cluster)")
    c.add_argument("--workers", type=int, default=None, help="local cluster: worker processes (default: sized "
                                                             "to the machine's cores and memory)")
    c.add_argument("--threads", type=int, default=None, help="torch threads per scan (default: cores / workers)")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    c.add_argument("--model", action="append", metavar="TARGET=VERSION", help="model version per target")
    c.add_argument("--format", default="nifti", choices=["nifti", "seg", "rtstruct"],
                   help="seg: also <target>.dcm, a DICOM SEG on each DICOM scan's series; rtstruct: also rtstruct.dcm, "
                        "an RT Structure Set with every target's ROIs (NIfTI masks are always written: the review "
                        "reads them); a scan that cannot carry one says why in its row")
    c.set_defaults(func=cmd_cohort_run)
    c = csub.add_parser("report", help="summary table and PNG plot of a cohort folder")
    c.add_argument("dir", help="the --out folder of 'ctseg cohort run'")
    c.set_defaults(func=cmd_cohort_report)
    return parser


def main(argv=None) -> int:
    """Run a command. A user's error prints one line (exit 2); anything else prints one line
    naming it (exit 1) unless ``--debug`` (anywhere on the line) asks for the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CTSegError as exc:
        if debug:
            raise
        print(f"ctseg: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named: missing, not writable, disk full
        if debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"ctseg: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback with --debug
        if debug:
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"ctseg: unexpected error ({type(exc).__name__}: {text}); run again with --debug "
              "for the traceback and report it", file=sys.stderr)
        return 1
