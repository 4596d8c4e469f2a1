"""SUVbw from a PET header: the one computation behind every SUV the gateway shows.

Free of Django, so render workers and tools use the same function as ingest.
"""

from __future__ import annotations

import datetime as dt

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


def suvbw_factor(ds: Dataset) -> float | None:
    """SUVbw per Bq/ml from a PET header, or None when the header does not allow it.

    SUVbw = C x weight(g) / (dose(Bq) x 2^(-Δt / T½)). With DecayCorrection
    START, Δt runs from the injection to SeriesDate/SeriesTime (the
    date-shifted header gives the same interval: every date moves by the same
    whole days); with ADMIN the image is already decay-corrected to injection.
    """
    if str(ds.get("Units", "")).upper() != "BQML":
        return None
    try:
        weight_g = float(ds.PatientWeight) * 1000.0
        drug = ds.RadiopharmaceuticalInformationSequence[0]
        dose = float(drug.RadionuclideTotalDose)
        half_life = float(drug.RadionuclideHalfLife)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    if weight_g <= 0 or dose <= 0 or half_life <= 0:
        return None
    correction = str(ds.get("DecayCorrection", "")).upper()
    if correction == "ADMIN":
        return weight_g / dose
    if correction != "START":
        return None
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
    if elapsed < 0:
        return None
    return weight_g / (dose * 2.0 ** (-elapsed / half_life))
