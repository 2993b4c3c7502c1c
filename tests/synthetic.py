"""Synthetic CT files written by the tests themselves (nothing is downloaded).

``make_hu_volume`` draws a body-like phantom in HU; ``write_nifti`` and
``write_dicom_series`` put it on disk with a chosen geometry, compression and untidiness.
"""
from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def make_hu_volume(shape=(20, 48, 40), seed=0) -> np.ndarray:
    """An int16 HU phantom on (i, j, k) axes: air, a body ellipse, two lungs, a bright spot."""
    rng = np.random.default_rng(seed)
    ni, nj, nk = shape
    i, j = np.meshgrid(np.linspace(-1, 1, ni), np.linspace(-1, 1, nj), indexing="ij")
    vol = np.full(shape, -1000, dtype=np.int16)
    body = (i / 0.9) ** 2 + (j / 0.8) ** 2 < 1
    lung_r = ((i + 0.4) / 0.3) ** 2 + (j / 0.5) ** 2 < 1
    lung_l = ((i - 0.4) / 0.3) ** 2 + (j / 0.5) ** 2 < 1
    for k in range(nk):
        sl = np.where(body, 40, -1000).astype(np.int16)
        sl[lung_r | lung_l] = -850
        vol[:, :, k] = sl
    vol[2:5, 3:6, 1:3] = 900  # an asymmetric marker near voxel (0, 0, 0)
    vol += rng.integers(-5, 6, size=shape, dtype=np.int16)
    return vol


def write_nifti(path, data, affine, *, slope=None, inter=None, dtype=None, qform_code=1, sform_code=1) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    if dtype is not None:
        img.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    nib.save(img, str(path))
    return Path(path)


def _base_dataset(path, series_uid, study_uid, frame_uid, modality, description):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    if frame_uid:
        ds.FrameOfReferenceUID = frame_uid
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "0000"
    return ds


def write_dicom_series(folder, hu_slices: np.ndarray, *, spacing=(2.5, 0.75, 0.8),
                       row_cos=(1, 0, 0), col_cos=(0, 1, 0), origin=(-100.0, -120.0, -50.0),
                       intercept=-1024.0, slope=1.0, modality="CT", description="phantom",
                       series_uid=None, study_uid=None, extension="", shuffle=True, seed=0,
                       tilt_deg=0.0, positions=None, transfer_syntax=None, frame_uid=True,
                       prefix="IM") -> list[Path]:
    """Write ``hu_slices`` (slice, row, column) as a single-frame CT series.

    ``spacing`` is (slice, row, column) in mm; slice k sits at origin + k*spacing[0]*normal
    (plus a shift along the column direction for gantry tilt), or at ``positions[k]`` (mm
    along the normal) when given. File names are shuffled and InstanceNumber is reversed so
    that neither can be used for ordering. ``transfer_syntax`` compresses the pixel data
    (RLE Lossless, JPEG 2000 Lossless or JPEG Lossless).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame = generate_uid() if frame_uid else None
    row_cos, col_cos = np.asarray(row_cos, float), np.asarray(col_cos, float)
    normal = np.cross(row_cos, col_cos)
    n = hu_slices.shape[0]
    names = [f"{prefix}{i:04d}" for i in range(n)]
    if shuffle:
        random.Random(seed).shuffle(names)
    written = []
    for k in range(n):
        along = positions[k] if positions is not None else k * spacing[0]
        pos = np.asarray(origin, float) + along * normal
        if tilt_deg:
            pos = pos + k * spacing[0] * np.tan(np.radians(tilt_deg)) * col_cos
        path = folder / (names[k] + extension)
        ds = _base_dataset(path, series_uid, study_uid, frame, modality, description)
        ds.InstanceNumber = n - k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.SliceThickness = f"{spacing[0]:g}"
        ds.Rows, ds.Columns = hu_slices.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        stored = np.round((hu_slices[k].astype(np.float64) - intercept) / slope)
        if stored.min() >= 0:
            ds.PixelRepresentation = 0
            stored = stored.astype(np.uint16)
        else:
            ds.PixelRepresentation = 1
            stored = stored.astype(np.int16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.PixelData = stored.tobytes()
        if transfer_syntax is not None:
            _compress(ds, stored, transfer_syntax)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def _compress(ds, stored, transfer_syntax):
    if transfer_syntax == pydicom.uid.JPEGLosslessSV1:
        # pydicom cannot encode JPEG Lossless; GDCM (through SimpleITK) can.
        import tempfile

        import SimpleITK as sitk

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "j.dcm"
            writer = sitk.ImageFileWriter()
            writer.SetImageIO("GDCMImageIO")
            writer.SetUseCompression(True)
            writer.SetCompressor("JPEG")
            writer.SetFileName(str(out))
            writer.Execute(sitk.GetImageFromArray(stored))
            src = pydicom.dcmread(out)
        assert src.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLosslessSV1
        for key in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
            setattr(ds, key, src.get(key))
        # GDCM may have applied its own rescale to fit the stored values.
        s_slope = float(src.get("RescaleSlope", 1) or 1)
        s_inter = float(src.get("RescaleIntercept", 0) or 0)
        ds.RescaleIntercept = f"{float(ds.RescaleIntercept) + float(ds.RescaleSlope) * s_inter:g}"
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * s_slope:g}"
        ds.PixelData = src.PixelData
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
        return
    ds.compress(transfer_syntax, stored)


def write_structured_report(path) -> Path:
    """A DICOM file with no image: a Basic Text SR."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = pydicom.uid.BasicTextSRStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def sitk_series_as_nifti(folder, out_path):
    """SimpleITK's reading of a DICOM series, written as NIfTI: the reference geometry."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    sitk.WriteImage(reader.Execute(), str(out_path))
    return nib.load(str(out_path))


def write_tiny_weights(root, targets=("lungs", "liver", "infection"), version="t1", seed=0, size=32,
                       constant: dict | None = None):
    """Tiny untrained U-Nets with cards under ``root/<target>/<version>/`` (for engine and GUI tests).

    ``constant``: {target: class}: that target's model outputs this class everywhere (its head
    ignores the features and favours the class), for tests whose result must not be empty.
    """
    import torch

    from napari_ctseg.models.definition import starter_definition
    from napari_ctseg.models.registry import ModelCard, write_version
    from napari_ctseg.models.unet import build_model

    labels = {"lungs": {"right lung": 1, "left lung": 2}, "liver": {"liver": 1}, "infection": {"infection": 1}}
    cards = {}
    for target in targets:
        torch.manual_seed(seed)
        arch = {"name": "unet2d", "in_channels": 3, "n_classes": len(labels[target]) + 1, "base": 4, "depth": 2}
        model = build_model(arch)
        if constant and target in constant:
            with torch.no_grad():
                model.head.weight.zero_()
                model.head.bias.fill_(-10.0)
                model.head.bias[int(constant[target])] = 10.0
        prep = {"window": [-1024, 600], "context": 1, "size": [size, size], "crop": "body"}
        card = ModelCard(target=target, version=version, labels=labels[target], architecture=arch,
                         preprocessing=prep, notes="untrained test model",
                         **starter_definition(target, labels[target]))
        cards[target] = write_version(Path(root) / target / version, model.state_dict(), card)
    return cards


def follower_network():
    """A real guidance-aware network whose weights say: label = (mask + include - exclude > 0.5),
    so a click's edit is the ball where its Gaussian exceeds 0.5 (radius sigma * sqrt(2 ln 2))."""
    import torch

    from napari_ctseg.models.unet import UNet2D

    net = UNet2D(1, 2, base=2, depth=1, norm="none", guidance_channels=3)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        c1, c2 = net.down[0][0], net.down[0][3]  # conv, (no norm), ReLU, conv
        c1.weight[0, 1, 1, 1], c1.weight[0, 2, 1, 1], c1.weight[0, 3, 1, 1] = 1.0, 1.0, -1.0
        c2.weight[0, 0, 1, 1] = 1.0
        net.head.weight[1, 0] = 20.0
        net.head.bias[1] = -10.0
    return net.eval()


def write_follower_version(root, target="liver", version="g1", sigma_mm=6.0, reach_mm=25.0, size=64):
    """``follower_network`` as a guidance-aware version of ``target`` under ``root`` (its card)."""
    from napari_ctseg.models.definition import starter_definition
    from napari_ctseg.models.registry import ModelCard, write_version

    labels = {"liver": {"liver": 1}, "infection": {"infection": 1}}[target]
    arch = {"name": "unet2d", "in_channels": 1, "n_classes": 2, "base": 2, "depth": 1, "norm": "none",
            "guidance_channels": 3}
    card = ModelCard(target=target, version=version, labels=labels, architecture=arch,
                     preprocessing={"window": [-200.0, 300.0], "context": 0, "size": [size, size], "crop": "none"},
                     notes="test network: follows the clicks", guidance={"sigma_mm": sigma_mm, "reach_mm": reach_mm},
                     **starter_definition(target, labels))
    return write_version(Path(root) / target / version, follower_network().state_dict(), card)


# --- jobs for napari_ctseg.jobs tests (imported by name in a child process) ------------------
def counting_job(n, fail_at=None, crash_at=None, marker=None):
    """Yields 0..n-1 and returns "done"; raises ValueError at ``fail_at``; the process dies at
    ``crash_at``; on being closed early writes ``marker`` (the job's clean-up ran)."""
    import os
    import time

    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad value at {i}")
            if i == crash_at:
                os._exit(3)
            yield i
            time.sleep(0.05)
    except GeneratorExit:
        if marker:
            Path(marker).write_text("cleaned up")
        raise
    return "done"


def pid_job(wait_s: float = 0.0):
    """Yields once, then returns its process id (which worker process ran it)."""
    import os
    import time

    yield 0
    time.sleep(wait_s)
    return os.getpid()


def doubling_job(shared):
    """Reads a ``jobs.SharedArray`` in the child and returns its double as a new one."""
    from napari_ctseg.jobs import SharedArray

    yield 0
    out = SharedArray.copy_of(shared.array * 2)
    shared.close()
    out.close()
    return out


def fine_tune_that_dies(target, corrections, **kwargs):
    """Stands in for ``fine_tuning.fine_tune`` in a child process: reports once, then the
    process dies as an out-of-memory kill or a crash in native code would leave it."""
    import os

    from napari_ctseg.jobs import Progress

    yield Progress(0, 10, f"reading {len(corrections)} correction(s) for {target}")
    os._exit(3)


def fine_tune_out_of_memory(target, corrections, **kwargs):
    """Stands in for ``fine_tuning.fine_tune``: reports once, then runs out of memory."""
    from napari_ctseg.jobs import Progress

    yield Progress(0, 10, f"reading {len(corrections)} correction(s) for {target}")
    raise MemoryError("cannot allocate 12.5 GiB for the batch")
