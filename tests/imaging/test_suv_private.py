"""Philips PET in counts: the private activity-concentration and SUV scale factors (OHIF/Viewers#1418).

The phantom's PET files are turned into what a Philips scanner writes for a CNTS
image: Units CNTS and the "Philips PET Private Group" block at (7053,xx). SUVbw is
worked out here from the header alone (decay of the dose to the series time); the
gateway must scale counts to Bq/ml by (7053,1009) before it, fall back to
(7053,1000) only when the standard calculation cannot be made, and keep both tags
through de-identification.
"""

from __future__ import annotations

import datetime as dt
import io

import pydicom
import pytest

from imaging import storage
from imaging.models import Instance, Series
from imaging.services import IngestBatch
from imaging.suv import suv_calculation
from imaging.volumes import load_volume
from tests.conftest import ZONES

ACTIVITY_SCALE, VENDOR_SUV = 2.5, 4.2e-4


def _seconds(tm: str) -> float:
    moment = dt.datetime.strptime(tm.split(".")[0].ljust(6, "0"), "%H%M%S")  # noqa: DTZ007
    return moment.hour * 3600 + moment.minute * 60 + moment.second


def _suvbw(ds: pydicom.Dataset) -> float:
    drug = ds.RadiopharmaceuticalInformationSequence[0]
    elapsed = _seconds(ds.SeriesTime) - _seconds(drug.RadiopharmaceuticalStartTime)
    return float(ds.PatientWeight) * 1000 / (float(drug.RadionuclideTotalDose)
                                             * 2 ** (-elapsed / float(drug.RadionuclideHalfLife)))


def _philips(ds: pydicom.Dataset, *, activity: float | None = ACTIVITY_SCALE,
             suv: float | None = VENDOR_SUV) -> pydicom.Dataset:
    ds.Units = "CNTS"
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    if suv is not None:
        block.add_new(0x00, "DS", str(suv))
    if activity is not None:
        block.add_new(0x09, "DS", str(activity))
    return ds


def _ingested(files, vendor) -> tuple[Series, pydicom.Dataset]:
    """The PET files as ``vendor`` writes them, through the import door: (series, first stored)."""
    batch = IngestBatch(actor="cli:test", door="import")
    for path in files:
        buffer = io.BytesIO()
        vendor(pydicom.dcmread(path)).save_as(buffer, enforce_file_format=True)
        batch.ingest(buffer.getvalue())
    batch.close()
    series = Series.objects.get(modality="PT")
    first = Instance.objects.filter(series=series)[0]
    return series, pydicom.dcmread(io.BytesIO(storage.object_get(first.object_id)))


def _pet_files(phantom):
    out, truth = phantom
    return sorted((out / truth["patients"][0]["folder"] / "PT").glob("*.dcm"))


def test_counts_become_bq_per_ml_by_the_activity_scale_before_suv(phantom):
    ds = pydicom.dcmread(_pet_files(phantom)[0])
    expected = _suvbw(ds) * ACTIVITY_SCALE
    calculation = suv_calculation(_philips(ds))
    assert calculation.factor == pytest.approx(expected, rel=1e-9)
    assert calculation.activity_scale == ACTIVITY_SCALE and calculation.source == "header"


def test_the_vendor_suv_factor_is_used_only_where_the_standard_calculation_cannot_be(phantom):
    ds = _philips(pydicom.dcmread(_pet_files(phantom)[0]), activity=None)
    del ds.PatientWeight
    calculation = suv_calculation(ds)
    assert calculation.factor == VENDOR_SUV
    assert "Philips SUV Scale Factor" in calculation.source and "no patient weight" in calculation.missing


def test_counts_without_philips_factors_have_no_suv_and_say_why(phantom):
    ds = pydicom.dcmread(_pet_files(phantom)[0])
    ds.Units = "CNTS"
    calculation = suv_calculation(ds)
    assert calculation.factor is None and any("CNTS" in reason for reason in calculation.missing)


@pytest.mark.django_db(databases=ZONES, transaction=True)
def test_the_private_factors_survive_de_identification_and_reach_the_volume(store, phantom):
    files = _pet_files(phantom)
    expected = _suvbw(pydicom.dcmread(files[0])) * ACTIVITY_SCALE
    series, stored = _ingested(files, _philips)
    block = stored.private_block(0x7053, "Philips PET Private Group")
    assert float(block[0x09].value) == ACTIVITY_SCALE and float(block[0x00].value) == VENDOR_SUV
    assert load_volume(series).suv_factor == pytest.approx(expected, rel=1e-6)


# --- GE: a series re-made after the scan keeps the scan start in GE's private block -------------

REMADE_LATER_S = 2 * 3600


def _hhmmss(seconds: float) -> str:
    seconds = int(seconds) % 86400
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _ge_remade(ds: pydicom.Dataset) -> pydicom.Dataset:
    """What a GE console writes for a series re-made two hours after the scan: a later SeriesTime
    and the original scan start at (0009,xx0D) of "GEMS_PETD_01"."""
    scan_start = ds.SeriesDate + ds.SeriesTime.split(".")[0]
    ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", scan_start)
    ds.SeriesTime = _hhmmss(_seconds(ds.SeriesTime) + REMADE_LATER_S)
    return ds


def test_a_ge_series_made_after_the_scan_decays_to_the_private_scan_start(phantom):
    original = pydicom.dcmread(_pet_files(phantom)[0])
    expected = _suvbw(original)  # decay to the real scan start, from the untouched header
    remade = _ge_remade(pydicom.dcmread(_pet_files(phantom)[0]))
    assert _suvbw(remade) != pytest.approx(expected, rel=1e-3)  # the series time would be wrong
    calculation = suv_calculation(remade)
    assert calculation.factor == pytest.approx(expected, rel=1e-9)
    assert "GE" in calculation.scan_start


def test_the_ge_scan_start_is_not_used_where_the_series_time_is_the_scan(phantom):
    ds = pydicom.dcmread(_pet_files(phantom)[0])
    expected = _suvbw(ds)
    ds.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, "DT", ds.SeriesDate + "000000")
    calculation = suv_calculation(ds)
    assert calculation.factor == pytest.approx(expected, rel=1e-9)
    assert calculation.scan_start == "SeriesTime"


@pytest.mark.django_db(databases=ZONES, transaction=True)
def test_the_ge_scan_start_survives_de_identification_shifted_with_every_date(store, phantom):
    files = _pet_files(phantom)
    first = pydicom.dcmread(files[0])
    expected = _suvbw(first)
    series, stored = _ingested(files, _ge_remade)
    kept = str(stored.private_block(0x0009, "GEMS_PETD_01")[0x0D].value)
    day = dt.datetime.strptime
    shift = day(stored.SeriesDate, "%Y%m%d") - day(first.SeriesDate, "%Y%m%d")
    assert shift.days != 0, "the profile shifts dates"
    assert day(kept[:8], "%Y%m%d") - day(first.SeriesDate, "%Y%m%d") == shift
    assert kept[8:14] == first.SeriesTime.split(".")[0][:6]
    assert load_volume(series).suv_factor == pytest.approx(expected, rel=1e-6)
