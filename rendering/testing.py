"""Volumes from the synthetic phantom, for tests and the benchmark (not for production).

Production volumes come from ``imaging``; this module reads the phantom's DICOM files
with SimpleITK (which handles PET's per-slice rescale slope) and takes the SUVbw
factor from :func:`imaging.suv.suvbw_factor`, as ingest does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from imaging.suv import suvbw_factor
from rendering.operations import WorkerContext, operation
from rendering.viewstate import ViewState
from rendering.volume import Volume


def volume_from_dicom_folder(folder: Path, series_id: str | None = None) -> Volume:
    """Read one single-series folder into a :class:`Volume` (CT as int16 HU, PET as float32 Bq/ml)."""
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    voxels = sitk.GetArrayFromImage(image)
    modality = str(header.Modality)
    if modality == "CT":
        voxels = np.clip(np.rint(voxels), -32768, 32767).astype(np.int16)
    return Volume(
        voxels=np.ascontiguousarray(voxels),
        spacing=tuple(reversed(image.GetSpacing())),
        origin=tuple(image.GetOrigin()),
        direction=np.array(image.GetDirection()).reshape(3, 3),
        modality=modality,
        series_id=series_id or str(header.SeriesInstanceUID),
        frame_of_reference_uid=str(header.FrameOfReferenceUID),
        suv_factor=suvbw_factor(header) if modality in ("PT", "NM") else None,
    )


def volumes_from_phantom(root: Path, patient: int = 0) -> tuple[Volume, Volume, dict]:
    """(CT, PET, truth) of one phantom patient written by ``imaging.phantom.phantom_write``."""
    root = Path(root)
    truth = json.loads((root / "truth.json").read_text())
    entry = truth["patients"][patient]
    ct = volume_from_dicom_folder(root / entry["folder"] / "CT", entry["ct_series_instance_uid"])
    pet = volume_from_dicom_folder(root / entry["folder"] / "PT", entry["pet_series_instance_uid"])
    return ct, pet, entry


class PhantomSource:
    """A :class:`rendering.volume.VolumeSource` over a phantom folder (series id = SeriesInstanceUID).

    ``delay_s`` makes every load slow (the crash-recovery test kills a worker while it
    waits); ``marker`` is a folder where a file named after the loading process id is
    touched when a load starts, and ``setup-<pid>`` when the source is set up.
    """

    def __init__(self, root: str, delay_s: float = 0.0, marker: str | None = None) -> None:
        if marker:
            import os

            Path(marker).mkdir(parents=True, exist_ok=True)
            (Path(marker) / f"setup-{os.getpid()}").touch()
        self.root = Path(root)
        self.delay_s = delay_s
        self.marker = Path(marker) if marker else None
        truth = json.loads((self.root / "truth.json").read_text())
        self._folders: dict[str, Path] = {}
        for entry in truth["patients"]:
            self._folders[entry["ct_series_instance_uid"]] = self.root / entry["folder"] / "CT"
            self._folders[entry["pet_series_instance_uid"]] = self.root / entry["folder"] / "PT"

    def load(self, series_id: str) -> Volume:
        if self.marker is not None:
            import os

            self.marker.mkdir(parents=True, exist_ok=True)
            (self.marker / f"{os.getpid()}").touch()
        if self.delay_s:
            time.sleep(self.delay_s)
        folder = self._folders[series_id]
        return volume_from_dicom_folder(folder, series_id)


@operation("layer_voxels")
def _layer_voxels(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                  arguments: dict[str, Any]) -> dict[str, int]:
    """Voxel count of every layer: an operation registered outside the pools, for their tests."""
    return {series_id: int(volume.voxels.size) * int(arguments.get("times", 1))
            for series_id, volume in volumes.items()}
