"""Model versions: bundled weights, their cards, and loading them safely.

A version is a folder ``<root>/<target>/<version>/`` holding

* ``model.pt``: the network's state dict (``torch.save``; loaded with ``weights_only=True``),
* ``card.json``: the model card (``ModelCard``): labels, architecture, preprocessing,
  training data and split, validation figures, the sha256 of ``model.pt``, license.

A ``ModelRegistry`` is where versions are found: its roots are searched in order (the first
root holding a version wins). ``ModelRegistry.default()``, what napari and the CLI use, has

1. the folders given on the command line (``ctseg --weights DIR``), then those in the
   environment variable ``CTSEG_WEIGHTS_DIR`` (``os.pathsep``-separated),
2. the user's folder, ``user_weights_dir()`` (under platformdirs' user data directory;
   ``$XDG_DATA_HOME/napari-ctseg/weights`` on Linux): fine-tuned versions and the active choice,
3. the weights bundled with the package (``napari_ctseg/weights``, a link to the
   repository's top-level ``weights/`` in a source checkout, copied files when installed).
   They are never written to.

Tests and scripts build their own registry (``ModelRegistry([folder], user_dir=...)``); the
module-level shorthands (``get_card``, ``load_model``, ...) take ``roots=``: a registry,
folders (the first one acting as the user folder), or ``None`` for the default. The targets
are those with a version in the registry (``targets()``), not a list in code.
A version's name is its folder's name; folders whose name starts with a dot are runs in
progress and never listed. Versions sort naturally (``v2`` < ``v10`` < ``v10-ft1``).

The active version of a target is the one the user chose (``set_active_version``, kept
in ``active_models.json`` in the registry's user folder) when it still exists; otherwise the
newest version that is not a *candidate* (a version whose card carries
``"status": "candidate"``: a fine-tuned one that did not pass the promotion rule, or a
bundled version offered for trying).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from napari_ctseg._files import replaced_atomically, write_atomically
from napari_ctseg.errors import ModelError
from napari_ctseg.models.unet import build_model

__all__ = [
    "TARGETS", "ModelCard", "ModelError", "ModelRegistry", "as_registry", "load_card_model", "WEIGHTS_ENV",
    "bundled_weights_dir", "weight_roots",
    "list_versions", "active_version", "get_card", "load_model", "verify_weights", "sha256_file",
    "write_version", "half_state_dict", "user_weights_dir", "describe", "LICENSE_NOTE",
    "set_active_version", "remove_version", "version_source", "next_version_name", "active_file",
    "derive_version", "DEFINITION_FIELDS",
]

# The targets ``ctseg train`` knows how to make (its data readers and starter definitions).
# What can be *segmented* is what a registry holds: ``ModelRegistry.targets()``.
TARGETS = ("lungs", "liver", "infection")
WEIGHTS_ENV = "CTSEG_WEIGHTS_DIR"
WEIGHTS_FILE = "model.pt"
CARD_FILE = "card.json"
CARD_FORMAT = 1
LICENSE_NOTE = "non-commercial research use"


@dataclass
class ModelCard:
    """What a model version is, how it was made, and how well it did.

    ``labels`` maps label names to the values in the output mask (0 is background).
    ``architecture`` and ``preprocessing`` are the dicts that ``build_model`` and
    ``napari_ctseg.models.preprocess.Preprocessing`` read. ``training`` holds the data,
    split, epochs, seed, device and settings; ``validation`` the figures per validation
    case. ``path`` is the version's folder (not stored in the JSON).
    """

    target: str
    version: str
    labels: dict[str, int]
    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    sha256: str = ""
    weights_file: str = WEIGHTS_FILE
    license: str = LICENSE_NOTE
    cite: list[str] = field(default_factory=list)
    notes: str = ""
    format: int = CARD_FORMAT
    # What the model's output means and how it is finished and shown (napari_ctseg.models.definition):
    display: dict[str, Any] = field(default_factory=dict)  # colours per label, style, opacity
    postprocess: list[dict[str, Any]] = field(default_factory=list)  # steps applied in order
    requires: list[str] = field(default_factory=list)  # targets whose masks this one needs first
    # Stages run before this version's own network (coarse-to-fine): see definition.STAGE_KEYS.
    stages: list[dict[str, Any]] = field(default_factory=list)
    # What the network can be given: "hu" (a CT in Hounsfield units) and/or "image8" (an 8-bit
    # slice already in the preprocessing window, e.g. a JPG export: value v = low + v/255 * width).
    inputs: list[str] = field(default_factory=lambda: ["hu"])
    # The operating point: {"threshold": t} labels a voxel as the (one) foreground class when its
    # probability is above t instead of above the background's (0.5); see definition.logit_bias.
    decision: dict[str, Any] = field(default_factory=dict)
    # A guidance-aware version (it takes clicks): the maps its network is given besides the
    # image and how clicks become maps (napari_ctseg.models.guidance.GuidanceSpec); empty: none.
    guidance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def weights_path(self) -> Path:
        if self.path is None:
            raise ModelError(f"model card {self.target}/{self.version} has no folder")
        return self.path / self.weights_file

    @property
    def takes_clicks(self) -> bool:
        """True for a guidance-aware version: its network follows include/exclude clicks."""
        return bool(self.guidance)

    @property
    def n_classes(self) -> int:
        return int(self.architecture.get("n_classes", len(self.labels) + 1))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        extra = d.pop("extra")
        return {**extra, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | None = None) -> ModelCard:
        where = f"{path / CARD_FILE}" if path is not None else "model card"
        if not isinstance(d, dict):
            raise ModelError(f"{where}: not a JSON object")
        missing = [k for k in ("target", "version", "labels", "architecture", "preprocessing") if k not in d]
        if missing:
            raise ModelError(f"{where}: missing {', '.join(missing)}")
        names = {f.name for f in fields(cls)} - {"extra", "path"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            card = cls(**known, extra=extra, path=path)
            card.labels = {str(k): int(v) for k, v in card.labels.items()}
            if not any(k in d for k in ("display", "postprocess", "requires")):
                from napari_ctseg.models.definition import upgrade_legacy_card

                upgrade_legacy_card(card)
            if "inputs" not in d:  # cards written before inputs were recorded
                from napari_ctseg.models.definition import starter_definition

                card.inputs = list(starter_definition(card.target, card.labels).get("inputs", ["hu"]))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{where}: not a valid model card ({exc})") from None
        return card

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> ModelCard:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"{path / CARD_FILE}" if path is not None else "model card"
            raise ModelError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_dict(d, path)

    @classmethod
    def load(cls, folder) -> ModelCard:
        """The card in a version's folder."""
        folder = Path(folder)
        try:
            text = (folder / CARD_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelError(f"{folder}: no {CARD_FILE} in this model folder") from None
        except OSError as exc:
            raise ModelError(f"{folder / CARD_FILE}: cannot be read ({exc.strerror or exc})") from None
        return cls.from_json(text, folder)

    def save(self, folder=None) -> Path:
        """Write ``card.json`` into ``folder`` (default: the card's own), atomically."""
        folder = Path(folder) if folder is not None else self.path
        if folder is None:
            raise ModelError("no folder to save the model card in")
        write_atomically(folder / CARD_FILE, self.to_json())
        self.path = folder
        return folder / CARD_FILE


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_weights_dir() -> Path:
    """The weights shipped with napari-ctseg."""
    here = Path(__file__).resolve().parent.parent  # .../napari_ctseg
    packaged = here / "weights"
    if packaged.is_dir():
        return packaged
    checkout = here.parent.parent / "weights"  # <repo>/src/napari_ctseg -> <repo>/weights
    return checkout if checkout.is_dir() else packaged


class ModelRegistry:
    """Where model versions are found and which one is active: one object, passed around.

    ``roots`` are searched in order (the first root holding a version wins); ``user_dir``
    is where fine-tuned versions are written and where the user's choice of active
    version is kept (``active_models.json``); it is searched before the other roots.
    ``ModelRegistry.default()`` is what napari and the CLI use unless told otherwise;
    tests and scripts build their own (``ModelRegistry([folder], user_dir=...)``), so nothing
    they do reaches the user's real folder. A registry is a small picklable value (it is
    handed to fine-tuning's child process).
    """

    def __init__(self, roots: Iterable = (), user_dir=None):
        self.user_dir = Path(user_dir).expanduser() if user_dir is not None else None
        given = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        found = [Path(r).expanduser() for r in given]
        if self.user_dir is not None and self.user_dir not in found:
            found.insert(0, self.user_dir)
        self.roots: tuple[Path, ...] = tuple(found)

    @classmethod
    def default(cls, extra: Iterable = ()) -> ModelRegistry:
        """``extra`` folders, then those in ``$CTSEG_WEIGHTS_DIR``, the user's folder and the
        bundled weights (see the module docstring)."""
        env = os.environ.get(WEIGHTS_ENV, "")
        found = [*(Path(p) for p in extra), *(Path(p) for p in env.split(os.pathsep) if p.strip())]
        user = user_weights_dir()
        return cls([*found, user, bundled_weights_dir()], user_dir=user)

    def __repr__(self) -> str:
        return f"ModelRegistry(roots={[str(r) for r in self.roots]}, user_dir={self.user_dir})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ModelRegistry) and (self.roots, self.user_dir) == (other.roots, other.user_dir)

    def __hash__(self) -> int:
        return hash((self.roots, self.user_dir))

    # --- what is there -------------------------------------------------------------------
    def targets(self) -> list[str]:
        """The targets with at least one version, in the cards' display order (lungs, liver, ...)."""
        found: dict[str, int] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for folder in sorted(root.iterdir()):
                if folder.name in found or folder.name.startswith(".") or not folder.is_dir():
                    continue
                cards = self._cards_in(folder)
                if cards:  # the display order of the card drawn on top of the others (default 0)
                    display = cards[-1].display if isinstance(cards[-1].display, dict) else {}
                    found[folder.name] = int(display.get("order", 0))
        return sorted(found, key=lambda t: (found[t], t))

    def check_target(self, target: str) -> None:
        """Refuse a target that is neither napari-ctseg's own nor a folder in this registry."""
        if not isinstance(target, str) or not target or target.startswith(".") or "/" in target \
                or (target not in TARGETS and not any((root / target).is_dir() for root in self.roots)):
            raise ModelError(f"unknown target {target!r}; napari-ctseg segments "
                             f"{', '.join(self.targets()) or ', '.join(TARGETS)}")

    @staticmethod
    def _cards_in(folder: Path) -> list[ModelCard]:
        cards = []
        for sub in sorted(folder.iterdir()):
            if sub.name.startswith(".") or not sub.is_dir() or not (sub / CARD_FILE).is_file():
                continue
            try:
                cards.append(_load_card(sub))
            except ModelError:
                continue
        return cards

    def list_versions(self, target: str) -> list[ModelCard]:
        """The versions of a target's model with a card, oldest first (natural version order).

        A version found in several roots is taken from the first. A folder whose card
        cannot be read is skipped (``load_model`` on it says why).
        """
        self.check_target(target)
        cards: dict[str, ModelCard] = {}
        for root in self.roots:
            if (root / target).is_dir():
                for card in self._cards_in(root / target):
                    cards.setdefault(card.version, card)
        return [cards[v] for v in sorted(cards, key=_version_key)]

    def get_card(self, target: str, version: str | None = None) -> ModelCard:
        """The card of one version (default: the active one)."""
        self.check_target(target)
        if version is None:
            version = self.active_version(target)
        for root in self.roots:
            folder = root / target / version
            if folder.is_dir():
                card = _load_card(folder)
                if card.target != target:
                    raise ModelError(f"{folder / CARD_FILE}: the card is for {card.target!r}, not {target!r}")
                return card
        known = [c.version for c in self.list_versions(target)]
        raise ModelError(f"no {target} model version {version!r}; available: {', '.join(known) or 'none'}")

    def load_model(self, target: str, version: str | None = None, device: str | torch.device = "cpu"
                   ) -> tuple[nn.Module, ModelCard]:
        """The network of a version (default: the active one) on ``device``, checked (see ``load_card_model``)."""
        return load_card_model(self.get_card(target, version), device)

    def version_source(self, card: ModelCard) -> str:
        """Where a version comes from: ``"bundled"``, ``"fine-tuned"`` (the user's) or ``"folder"``."""
        if card.path is None:
            return "folder"
        folder = Path(card.path).resolve()
        places = [(bundled_weights_dir(), "bundled")]
        if self.user_dir is not None:
            places.insert(0, (self.user_dir, "fine-tuned"))
        for root, name in places:
            try:
                folder.relative_to(Path(root).resolve())
                return name
            except ValueError:
                continue
        return "folder"

    # --- the active choice ---------------------------------------------------------------
    @property
    def active_file(self) -> Path | None:
        """The user's choice of active version per target (JSON: {target: version})."""
        return self.user_dir / "active_models.json" if self.user_dir is not None else None

    def _read_active(self) -> dict[str, str]:
        try:
            data = json.loads(self.active_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, AttributeError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def active_version(self, target: str) -> str:
        """The version used when none is named (see the module docstring)."""
        versions = self.list_versions(target)
        if not versions:
            raise ModelError(self._no_weights_message(target))
        chosen = self._read_active().get(target)
        if chosen and any(c.version == chosen for c in versions):
            return chosen
        usable = [c for c in versions if c.extra.get("status") != "candidate"]
        return (usable or versions)[-1].version

    def set_active_version(self, target: str, version: str | None) -> str:
        """Make ``version`` the active one for ``target`` (``None``: back to the default rule).

        Returns the version now active. The choice is written atomically into this
        registry's user folder; a missing version raises ``ModelError`` and changes nothing.
        """
        self.check_target(target)
        if self.active_file is None:
            raise ModelError("this model registry has no user folder to keep the active choice in")
        if version is not None:
            self.get_card(target, version)  # must exist
        choice = self._read_active()
        if version is None:
            choice.pop(target, None)
        else:
            choice[target] = version
        write_atomically(self.active_file, json.dumps(choice, indent=2, sort_keys=True) + "\n")
        return self.active_version(target)

    # --- the user's versions ---------------------------------------------------------------
    def remove_version(self, target: str, version: str) -> str:
        """Delete one of the user's fine-tuned versions; return the version active afterwards.

        Bundled versions (and versions in other folders) are refused. When the removed
        version was the chosen active one, the choice falls back to the default.
        """
        import shutil

        card = self.get_card(target, version)
        source = self.version_source(card)
        if source != "fine-tuned":
            what = "bundled with napari-ctseg" if source == "bundled" else f"in {card.path.parent.parent}"
            raise ModelError(f"{target} {version} is {what}, not one of your fine-tuned versions; "
                             "it cannot be removed here")
        if self._read_active().get(target) == version:
            self.set_active_version(target, None)
        # Renamed first, so the version disappears at once even if deleting takes a while.
        trash = card.path.with_name(f".removed-{card.path.name}-{os.getpid()}")
        os.replace(card.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return self.active_version(target) if self.list_versions(target) else ""

    def next_version_name(self, target: str, base: str) -> str:
        """A new version name for a model fine-tuned from ``base``: ``<base>-ft<N>``, N unused so far."""
        stem = re.sub(r"-ft\d+$", "", base)
        used = {c.version for c in self.list_versions(target)}
        for root in self.roots:  # runs in progress count too
            folder = root / target
            if folder.is_dir():
                used |= {p.name.lstrip(".").removesuffix(".partial") for p in folder.iterdir()}
        n = 1
        while f"{stem}-ft{n}" in used:
            n += 1
        return f"{stem}-ft{n}"

    def _no_weights_message(self, target: str) -> str:
        where = ", ".join(str(r) for r in self.roots)
        return (f"no {target} model found (searched {where}); reinstall napari-ctseg to restore "
                f"its bundled weights, or point {WEIGHTS_ENV} at a folder with {target}/<version>/")


def as_registry(roots: ModelRegistry | Iterable | None = None) -> ModelRegistry:
    """``roots`` as a registry: a registry as it is, ``None`` the default one, folders a registry
    over them whose first folder is the user folder (where an active choice is kept)."""
    if isinstance(roots, ModelRegistry):
        return roots
    if roots is None:
        return ModelRegistry.default()
    folders = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    return ModelRegistry(folders, user_dir=folders[0] if folders else None)


def weight_roots(roots: ModelRegistry | Iterable | None = None) -> list[Path]:
    """The folders searched for ``<target>/<version>/``, in order of precedence."""
    return list(as_registry(roots).roots)


def _version_key(version: str):
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version) if p)


def _load_card(folder: Path) -> ModelCard:
    # The folder's name is the version: a copied or renamed folder is what the user sees.
    card = ModelCard.load(folder)
    card.version = folder.name
    return card


# Shorthands over a registry (``roots``: a ModelRegistry, folders, or None for the default one).
def list_versions(target: str, roots=None) -> list[ModelCard]:
    return as_registry(roots).list_versions(target)


def active_version(target: str, roots=None) -> str:
    return as_registry(roots).active_version(target)


def set_active_version(target: str, version: str | None, roots=None) -> str:
    return as_registry(roots).set_active_version(target, version)


def get_card(target: str, version: str | None = None, roots=None) -> ModelCard:
    return as_registry(roots).get_card(target, version)


def load_model(target: str, version: str | None = None, device: str | torch.device = "cpu",
               roots=None) -> tuple[nn.Module, ModelCard]:
    return as_registry(roots).load_model(target, version, device)


def remove_version(target: str, version: str, roots=None) -> str:
    return as_registry(roots).remove_version(target, version)


def next_version_name(target: str, base: str, roots=None) -> str:
    return as_registry(roots).next_version_name(target, base)


def version_source(card: ModelCard, roots=None) -> str:
    return as_registry(roots).version_source(card)


def active_file(roots=None) -> Path | None:
    return as_registry(roots).active_file


def verify_weights(card: ModelCard) -> Path:
    """Check that the card's weights file exists and matches its sha256; return its path."""
    path = card.weights_path
    if not path.is_file():
        raise ModelError(f"{path}: the weights of {card.target} model {card.version} are missing; "
                         "reinstall napari-ctseg or pick another version")
    if not card.sha256:
        raise ModelError(f"{path.parent / CARD_FILE}: the card gives no sha256 for {path.name}, "
                         "so the weights cannot be checked")
    digest = sha256_file(path)
    if digest != card.sha256.lower():
        raise ModelError(
            f"{path}: the weights file is corrupt or was modified (sha256 {digest[:12]}... does not "
            f"match the card's {card.sha256[:12]}...); reinstall napari-ctseg or pick another version"
        )
    return path


def load_card_model(card: ModelCard, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """The network of a model version, with its weights, in eval mode on ``device``, and its card.

    The weights' sha256 is checked against the card before anything is loaded, and the
    file is read with ``torch.load(..., weights_only=True)``. Raises ``ModelError`` for
    a missing version or file, a corrupt or modified file, an unknown architecture, or
    weights that do not fit the architecture. The card's operating point (``decision``) rides
    on the model as ``ctseg_logit_bias`` (``definition.logit_bias``), which ``models.predict``
    adds to the logits before taking labels.
    """
    from napari_ctseg.models.definition import logit_bias

    path = verify_weights(card)
    target = card.target
    model = build_model(card.architecture)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise ModelError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: the weights do not fit the card's architecture ({first})") from None
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelError(f"cannot put the {target} model on device {device!r}: {exc}") from None
    model.eval()
    # Not a parameter or buffer: never trained, never saved with the weights (fine-tuning keeps the
    # network calibrated as trained; the card's operating point is applied when labels are taken).
    model.ctseg_logit_bias = logit_bias(card)
    return model, card


# The fields of a card that say what its output means and how it is finished and shown: a
# version derived from another (``derive_version``) changes only these.
DEFINITION_FIELDS = ("postprocess", "display", "requires", "inputs", "decision")


def derive_version(base: ModelCard, folder, definition: dict[str, Any], notes: str | None = None) -> ModelCard:
    """A new version in ``folder`` with ``base``'s network (the weights file copied, its sha256
    checked) and ``base``'s card with ``definition``'s fields (``DEFINITION_FIELDS``) replaced.

    The card records what it was derived from and what changed (``derived_from``); its
    ``validation`` figures, which are the raw network's, stay as they were, except the mean Dice
    when a new ``decision`` brings its sweep (``training.operating_point``): then the sweep's
    figure at the chosen threshold. ``ModelError``
    for another field, an unknown post-processing step or an existing version in ``folder``.
    """
    from dataclasses import replace

    from napari_ctseg.models.definition import check_postprocess, logit_bias

    folder = Path(folder)
    unknown = sorted(set(definition) - set(DEFINITION_FIELDS))
    if unknown:
        raise ModelError(f"a derived version changes only {', '.join(DEFINITION_FIELDS)}, not {', '.join(unknown)}")
    check_postprocess(definition.get("postprocess", base.postprocess))
    logit_bias(replace(base, decision=definition.get("decision", base.decision)))  # a bad threshold: ModelError
    if (folder / CARD_FILE).exists():
        raise ModelError(f"{folder}: already holds a model version")
    source = verify_weights(base)
    changed = {k: v for k, v in definition.items() if getattr(base, k) != v}
    validation = dict(base.validation)
    chosen = next((row for row in (definition.get("decision") or {}).get("sweep", [])
                   if row.get("threshold") == definition["decision"].get("threshold")), None)
    if "decision" in changed and chosen is not None and "dice" in chosen:
        # the headline figure at the new operating point; the per-case figures stay the base's
        validation.update(mean_dice=chosen["dice"], mean_dice_at_argmax=base.validation.get("mean_dice"),
                          mean_dice_note=f"mean_dice at the decision threshold {chosen['threshold']}; the "
                                         f"per-case figures are {base.version}'s, at the argmax")
    card = replace(base, **definition, validation=validation, version=folder.name, path=None,
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   notes=base.notes if notes is None else notes,
                   extra={**{k: v for k, v in base.extra.items() if k not in ("status", "status_note")},
                          "derived_from": {"version": base.version, "sha256": base.sha256,
                                           "changed": sorted(changed)}})
    folder.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(folder / card.weights_file) as tmp:
        shutil.copyfile(source, tmp)
    card.save(folder)
    verify_weights(card)  # the copy is the base's file, byte for byte
    return card


def write_version(folder, state_dict: dict[str, torch.Tensor], card: ModelCard) -> ModelCard:
    """Write ``model.pt`` and then ``card.json`` (with the file's sha256) into ``folder``.

    Each file goes to a temporary file in the folder first and is renamed into place,
    so an interrupted write never leaves a half-written model behind. The same weights
    always make the same bytes (and sha256): ``torch.save`` to a file names the archive's
    folder after the file, here a random temporary name, so it is serialised in memory.
    """
    folder = Path(folder)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    write_atomically(folder / card.weights_file, buffer.getvalue())
    card.sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
    if not card.created:
        card.created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    card.save(folder)
    return card


def half_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors as float16 (half the file size); ``load_state_dict`` casts them back."""
    return {k: (v.half() if v.is_floating_point() else v) for k, v in state_dict.items()}


def user_weights_dir() -> Path:
    """Where the user's fine-tuned versions live (``<user data dir>/napari-ctseg/weights``)."""
    from platformdirs import user_data_path

    return Path(user_data_path("napari-ctseg", appauthor=False)) / "weights"


def describe(cards: Sequence[ModelCard]) -> list[str]:
    """One line per version: version, date, mean validation Dice."""
    out = []
    for c in cards:
        dice = c.validation.get("mean_dice") if isinstance(c.validation, dict) else None
        fig = f"validation Dice {dice:.3f}" if isinstance(dice, (int, float)) else "no validation figures"
        stages = "".join(f", after {st.get('name', 'stage')} by {c.target} {st.get('version')}"
                         for st in (c.stages or []) if isinstance(st, dict))
        out.append(f"{c.target} {c.version} ({c.created[:10] or 'undated'}): {fig}{stages}")
    return out
