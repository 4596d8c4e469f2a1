"""SUVbw from a PET header: the one computation behind every SUV the gateway shows.

Free of Django, so render workers and tools use the same function as ingest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from pydicom.dataset import Dataset


def dicom_datetime(date: str, time: str) -> dt.datetime | None:
    date, time = (date or "").strip(), (time or "").strip()
    if len(date) < 8 or len(time) < 4:
        return None
    whole, _, fraction = time.partition(".")
    whole = whole.ljust(6, "0")
    try:
        moment = dt.datetime.strptime(date[:8] + whole[:6], "%Y%m%d%H%M%S")  # noqa: DTZ007
    except ValueError:
        return None
    return moment + dt.timedelta(seconds=float("0." + fraction) if fraction.isdigit() else 0.0)


@dataclass(frozen=True)
class SuvCalculation:
    """SUVbw's factor and every header value it used, or why there is none (shown to the reader)."""

    factor: float | None
    units: str
    weight_kg: float | None
    dose_bq: float | None
    half_life_s: float | None
    decay_correction: str
    elapsed_s: float | None
    missing: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "method": "SUVbw", "missing": list(self.missing)}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _elapsed(ds: Dataset, drug: Dataset) -> float | None:
    """Seconds from injection to SeriesDate/SeriesTime (shifted dates keep intervals)."""
    injected = None
    start_dt = str(drug.get("RadiopharmaceuticalStartDateTime", "") or "")
    if start_dt:
        injected = dicom_datetime(start_dt[:8], start_dt[8:])
    series_date = str(ds.get("SeriesDate", "") or ds.get("AcquisitionDate", "") or "")
    if injected is None:
        injected = dicom_datetime(series_date, str(drug.get("RadiopharmaceuticalStartTime", "")))
    scanned = dicom_datetime(series_date, str(ds.get("SeriesTime", "")))
    if injected is None or scanned is None:
        return None
    elapsed = (scanned - injected).total_seconds()
    if elapsed < 0 and not start_dt:
        elapsed += 86400.0  # injection the evening before, times only
    return elapsed if elapsed >= 0 else None


def suv_calculation(ds: Dataset) -> SuvCalculation:
    """SUVbw = C x weight(g) / (dose(Bq) x 2^(-Δt / T½)), with what it used and what it lacked.

    With DecayCorrection START, Δt runs from the injection to SeriesDate/SeriesTime
    (the date-shifted header gives the same interval: every date moves by the same
    whole days); with ADMIN the image is already decay-corrected to injection.
    """
    units = str(ds.get("Units", "")).upper()
    sequence = ds.get("RadiopharmaceuticalInformationSequence") or [Dataset()]
    drug = sequence[0]
    weight = _number(ds.get("PatientWeight"))
    dose = _number(drug.get("RadionuclideTotalDose"))
    half_life = _number(drug.get("RadionuclideHalfLife"))
    correction = str(ds.get("DecayCorrection", "")).upper()
    elapsed = _elapsed(ds, drug) if correction == "START" else None
    missing = [reason for reason, lacking in (
        (f"Units is {units or 'empty'}, not BQML", units != "BQML"),
        ("no patient weight", weight is None), ("no injected dose", dose is None),
        ("no radionuclide half-life", half_life is None),
        (f"decay correction {correction or 'not given'} (START or ADMIN needed)",
         correction not in {"START", "ADMIN"}),
        ("no injection or series time", correction == "START" and elapsed is None)) if lacking]
    factor = None
    if not missing and weight and dose and half_life:
        decayed = dose if correction == "ADMIN" else dose * 2.0 ** (-(elapsed or 0.0) / half_life)
        factor = weight * 1000.0 / decayed
    return SuvCalculation(factor, units, weight, dose, half_life, correction, elapsed, tuple(missing))


def suvbw_factor(ds: Dataset) -> float | None:
    """SUVbw per Bq/ml from a PET header, or None when the header does not allow it."""
    return suv_calculation(ds).factor
