"""Fine-tuning: seconds per training step, the GUI's longest stall while it trains, and whether
a fine-tune on a real correction helps where the model was wrong without hurting elsewhere.

Prints, on this machine:
  * ``--step``: seconds per training step on the CPU (forward, backward, AdamW) of the
    bundled U-Net architecture at batch 8, at 256x256 (the issue's yardstick) and at
    128x128 (the size our models use). Goal: <= 1 s at 256x256 here;
  * ``--gui``: the longest event-loop stall of a real napari viewer (Xvfb) with the real
    CHAOS 03 scan open while the Fine-tune widget trains on its correction. Goal <= 100 ms;
  * ``--accuracy``: liver v1 fine-tuned on CHAOS 03 with its expert mask as the user's
    correction (a validation case on which v1 is measurably wrong: Dice 0.939), replaying
    the liver training cases from ../shared/data. Dice before and after on the held-aside
    corrected slices, on the other validation case (dcmqi) and, as a forgetting check,
    on the two training volumes. Goal: better on the correction, no loss elsewhere.

Everything is written to a temporary user data folder; the user's own models and
corrections are not touched. Run under Xvfb for --gui:
  xvfb-run -a .venv/bin/python benchmarks/finetune.py --step --gui --accuracy
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from _setup import DATA

SCAN = DATA / "liver_chaos03" / "ct.nii.gz"
MASK = DATA / "liver_chaos03" / "liver.nii.gz"


def child_step(size: int, steps: int, threads: int | None, how: str) -> dict:
    """One training step as fine_tune takes it ("ours": frozen BatchNorm statistics,
    channels-last, bfloat16 autocast where the CPU has it) or plainly ("plain": float32)."""
    import torch

    from napari_ctseg.training.engine import autocast_dtype, freeze_batchnorm
    from napari_ctseg.models.unet import build_model
    from napari_ctseg.training import dice_ce_loss, default_config

    if threads:
        torch.set_num_threads(threads)
    arch = default_config("lungs").architecture
    model = build_model(arch)
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, arch["in_channels"], size, size, generator=g)
    y = torch.randint(0, arch["n_classes"], (8, size, size), generator=g)
    precision = None
    if how == "ours":
        freeze_batchnorm(model)
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        precision = autocast_dtype(torch.device("cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
            logits = model(x)
        loss = dice_ce_loss(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # the first steps allocate
            times.append(time.perf_counter() - t)
    return {"size": size, "median_s": float(np.median(times)), "min_s": float(np.min(times)),
            "threads": torch.get_num_threads(), "steps": steps,
            "precision": "bfloat16 autocast" if precision is not None else "float32"}


def child_gui(epochs: int, steps: int) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from _gui_stall import StallMeter, settle, spin
    from napari_ctseg.editing import corrections
    from napari_ctseg._napari.widgets.fine_tune import FineTuneWidget

    corrections.record_correction(SCAN, MASK, "liver", "v1", None, {"1": 1})
    viewer = napari.Viewer(show=True)
    viewer.open(str(SCAN), plugin="napari-ctseg")
    widget = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.target_combo.setCurrentText("liver")
    widget.epochs_spin.setValue(epochs)
    widget.steps_spin.setValue(steps)
    widget.device_combo.setCurrentIndex(1)
    widget.data_edit.setText(str(DATA))  # replay and validation from the training data
    app = QApplication.instance()
    settle(app)
    with StallMeter() as meter:
        t0 = time.perf_counter()
        widget.start()
        spin(app, lambda: widget.worker is None)
    total = time.perf_counter() - t0
    card = widget.card
    status = widget.status.text()
    viewer.close()
    return {**meter.figures(), "seconds": total, "version": card.version if card else None, "status": status}


def child_accuracy(epochs: int, steps: int, lr: float, seed: int, replay: bool = True) -> dict:
    from napari_ctseg.training.fine_tuning import CorrectionCase, fine_tune
    from napari_ctseg.models.preprocess import Preprocessing
    from napari_ctseg.models.registry import load_model
    from napari_ctseg.training import load_case, run_to_end, validate

    t0 = time.perf_counter()
    card = run_to_end(fine_tune("liver", [CorrectionCase(str(SCAN), str(MASK))], base_version="v1",
                                data_dir=DATA if replay else None,
                                config={"epochs": epochs, "steps_per_epoch": steps, "lr": lr}, seed=seed))
    seconds = time.perf_counter() - t0
    ft = card.extra["fine_tune"]
    # Forgetting check beyond the rule: the training volumes and the whole correction scan.
    base, base_card = load_model("liver", "v1")
    new, _ = load_model("liver", card.version)
    prep = Preprocessing.from_dict(base_card.preprocessing)
    cases = [load_case("liver", DATA, n) for n in ("liver_ircad01", "liver_ircad07", "liver_chaos03")]
    labels = dict(base_card.labels)
    b = validate(base, cases, prep, labels, "cpu")["cases"]
    a = validate(new, cases, prep, labels, "cpu")["cases"]
    held = card.training["corrections"][0]["held_aside_slices"]
    return {"version": card.version, "promoted": ft["promoted"], "reason": ft["reason"], "before": ft["before"],
            "after": ft["after"], "held_aside_slices": [min(held), max(held)], "n_held": len(held),
            "n_changed": len(card.training["corrections"][0]["changed_slices"]),
            "guard": card.training["forgetting_guard"].split(" from ")[0],
            "other_before": b, "other_after": a, "seconds": seconds,
            "config": {"epochs": epochs, "steps": steps, "lr": lr, "seed": seed}}


def run_child(env: dict, *args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step", action="store_true", help="seconds per training step")
    parser.add_argument("--gui", action="store_true", help="GUI stall while fine-tuning (needs Xvfb)")
    parser.add_argument("--accuracy", action="store_true", help="fine-tune liver v1 on CHAOS 03")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="steps per epoch")
    parser.add_argument("--lr", type=float, default=None, help="default: FineTuneConfig's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)

    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "step":
            out = child_step(int(rest[0]), int(rest[1]), int(rest[2]) or None, rest[3])
        elif kind == "gui":
            out = child_gui(int(rest[0]), int(rest[1]))
        else:
            out = child_accuracy(int(rest[0]), int(rest[1]), float(rest[2]), int(rest[3]), rest[4] == "replay")
        print(json.dumps(out))
        return
    if not (args.step or args.gui or args.accuracy):
        args.step = args.accuracy = True
    from napari_ctseg.training.fine_tuning import FineTuneConfig

    lr = args.lr if args.lr is not None else FineTuneConfig().lr
    def env():  # each run its own empty user data folder
        return {**os.environ, "XDG_DATA_HOME": tempfile.mkdtemp(prefix="ctseg-bench-ft-")}

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    if args.step:
        for size in (256, 128):
            for how in ("ours", "plain"):
                r = run_child(env(), "step", str(size), "10", str(args.threads or 0), how)
                label = "as fine_tune runs it" if how == "ours" else "plain float32 (reference)"
                print(f"training step, batch 8 at {size}x{size}, CPU ({r['threads']} threads), {label} "
                      f"[{r['precision']}]: median {r['median_s']:.3f} s, best {r['min_s']:.3f} s "
                      f"over {r['steps']} steps")
    if (args.gui or args.accuracy) and not SCAN.is_file():
        print(f"{SCAN} is not here: skipping the GUI and accuracy figures")
        return
    if args.gui:
        r = run_child(env(), "gui", str(min(args.epochs, 2)), str(args.steps))
        print(f"GUI while fine-tuning liver on {SCAN.parent.name} ({r['seconds']:.1f} s, CPU): longest "
              f"event-loop stall {r['max_stall_ms']:.0f} ms, 99th percentile {r['p99_stall_ms']:.0f} ms "
              f"over {r['ticks']} ticks; result: {r['status']}")
    if args.accuracy:
        r = run_child(env(), "accuracy", str(args.epochs), str(args.steps), str(lr), str(args.seed), "replay")
        b, a = r["before"], r["after"]
        print(f"liver v1 -> {r['version']} fine-tuned on {SCAN.parent.name} (expert mask as the correction; "
              f"{r['n_changed']} slices where v1 disagrees, {r['n_held']} held aside: z {r['held_aside_slices']}), "
              f"{r['config']['epochs']} epochs x {r['config']['steps']} steps, lr {r['config']['lr']:g}, "
              f"{r['guard']}, {r['seconds']:.0f} s on the CPU")
        print(f"  held-aside corrected slices   Dice {b['corrections']:.4f} -> {a['corrections']:.4f}")
        for name, v in a["validation_cases"].items():
            print(f"  validation {name[:18]:<18} Dice {b['validation_cases'][name]:.4f} -> {v:.4f}")
        for name in r["other_after"]:
            what = "correction scan, all slices (mostly trained on)" if name == SCAN.parent.name \
                else "training case (forgetting check)"
            print(f"  {name:<29} Dice {r['other_before'][name]:.4f} -> {r['other_after'][name]:.4f}  ({what})")
        print(f"  {'promoted' if r['promoted'] else 'kept as a candidate'}: {r['reason'].split(';')[0]}")


if __name__ == "__main__":
    main()
