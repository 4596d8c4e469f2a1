"""Phantom volumes and helpers shared by the rendering tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polib
import pytest
from PIL import Image

from imaging.phantom import phantom_write
from rendering.engine import RenderedFrame, RenderEngine
from rendering.testing import volume_from_dicom_folder, volumes_from_phantom
from rendering.viewstate import viewstate_from_dict
from tests.rendering.moved import pet_move

SLICES = 40
READER_LANGUAGE = "hu"


@pytest.fixture
def reader_catalogue(tmp_path: Path, settings):
    """Install a Hungarian catalogue in which each given msgid reads ``⟦msgid⟧`` (or ``wrap`` of it): a
    text shown so went through gettext in the reader's language, one without did not."""

    def install(*msgids: str, wrap: str = "⟦{}⟧") -> str:
        catalogue = polib.POFile()
        catalogue.metadata = {"Content-Type": "text/plain; charset=UTF-8", "Language": READER_LANGUAGE,
                              "Plural-Forms": "nplurals=2; plural=(n != 1);"}
        for msgid in msgids:
            catalogue.append(polib.POEntry(msgid=msgid, msgstr=wrap.format(msgid)))
        target = tmp_path / "locale" / READER_LANGUAGE / "LC_MESSAGES" / "django.mo"
        target.parent.mkdir(parents=True, exist_ok=True)
        catalogue.save_as_mofile(str(target))
        settings.LOCALE_PATHS = [tmp_path / "locale"]
        return READER_LANGUAGE

    return install


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render_phantom")
    phantom_write(out_dir=out, slices=SLICES, patients=1, seed=7)
    return out


@pytest.fixture(scope="session")
def phantom(phantom_dir):
    """(ct, pet, truth-of-patient-0, volumes mapping)."""
    ct, pet, truth = volumes_from_phantom(phantom_dir)
    return ct, pet, truth, {ct.series_id: ct, pet.series_id: pet}


@pytest.fixture(scope="session")
def moved(phantom, tmp_path_factory, phantom_dir):
    """(moved PET volume, T): the phantom's PET as if the patient had moved (its own frame of
    reference, ``tests/rendering/moved.py``), T taking its patient mm back onto the CT's."""
    folder = tmp_path_factory.mktemp("moved_pet")
    truth_move = pet_move(phantom_dir / phantom[2]["folder"] / "PT", folder)
    return volume_from_dicom_folder(folder), truth_move


@pytest.fixture(scope="session")
def moved_same_frame(phantom, tmp_path_factory, phantom_dir):
    """(moved PET volume, T) as ``moved``, but written in the CT's frame of reference (a PET/CT
    whose patient moved between the scans)."""
    folder = tmp_path_factory.mktemp("moved_pet_same_frame")
    truth_move = pet_move(phantom_dir / phantom[2]["folder"] / "PT", folder, same_frame=True)
    return volume_from_dicom_folder(folder), truth_move


@pytest.fixture(scope="session")
def engine() -> RenderEngine:
    return RenderEngine()


def decode(frame: RenderedFrame) -> np.ndarray:
    image = Image.open(io.BytesIO(frame.data))
    assert image.size == (frame.width, frame.height)
    return np.asarray(image)


def state(ct, **overrides):
    data = {
        "view": "axial",
        "layers": [{"series_id": ct.series_id, "window_preset": "abdomen"}],
        "quality": "still",
        "width": 512,
        "height": 512,
    }
    data.update(overrides)
    return viewstate_from_dict(data)
