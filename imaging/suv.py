"""SUVbw from a PET header: the one computation behind every SUV the gateway shows.

Free of Django's setup, so render workers and tools use the same function as ingest. What a
factor lacks is said to the reader (:class:`rendering.said.Said`, translated where it is shown);
the calculation kept with a series records it in English.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, replace
from typing import Any

from django.utils.translation import gettext
from pydicom.dataset import Dataset

from gateway.i18n import gettext_noop
from rendering.said import Said


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
    height_m: float | None = None
    activity_scale: float | None = None
    """Philips' Activity Concentration Scale Factor (7053,1009): Bq/ml per count of a CNTS image."""
    vendor_suv_factor: float | None = None
    """Philips' SUV Scale Factor (7053,1000), used only where the standard calculation cannot be made."""
    source: str = "header"
    scan_start: str = ""
    """Which header gave the scan start the decay runs to (START correction only)."""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "method": "SUVbw", "missing": list(self.missing)}


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


GE_PET = "GEMS_PETD_01"
GE_SCAN_START = 0x0D
"""GE's private scan start date-time (0009,xx0D), which QIBA's vendor-neutral SUV uses when the
series time is later than the acquisition's (a series re-made after the scan)."""


def ge_scan_start(ds: Dataset) -> dt.datetime | None:
    try:
        value = str(ds.private_block(0x0009, GE_PET)[GE_SCAN_START].value or "").strip()
    except (KeyError, ValueError):
        return None
    return dicom_datetime(value[:8], value[8:])


def _scan_start(ds: Dataset, series_date: str) -> tuple[dt.datetime | None, str]:
    """When the scan started, and which header said so (QIBA: series time unless it is later
    than the acquisition's, then GE's private scan start where present)."""
    series = dicom_datetime(series_date, str(ds.get("SeriesTime", "")))
    acquired = dicom_datetime(str(ds.get("AcquisitionDate", "") or series_date),
                              str(ds.get("AcquisitionTime", "")))
    if series is None or acquired is None or series <= acquired:
        return series, "SeriesTime"
    private = ge_scan_start(ds)
    return (private, "GE scan start (0009,100D)") if private is not None else (series, "SeriesTime")


def _elapsed(ds: Dataset, drug: Dataset) -> tuple[float | None, str]:
    """(seconds from injection to the scan start, its source); shifted dates keep intervals."""
    injected = None
    start_dt = str(drug.get("RadiopharmaceuticalStartDateTime", "") or "")
    if start_dt:
        injected = dicom_datetime(start_dt[:8], start_dt[8:])
    series_date = str(ds.get("SeriesDate", "") or ds.get("AcquisitionDate", "") or "")
    if injected is None:
        injected = dicom_datetime(series_date, str(drug.get("RadiopharmaceuticalStartTime", "")))
    scanned, source = _scan_start(ds, series_date)
    if injected is None or scanned is None:
        return None, source
    elapsed = (scanned - injected).total_seconds()
    if elapsed < 0 and not start_dt:
        elapsed += 86400.0  # injection the evening before, times only
    return (elapsed if elapsed >= 0 else None), source


def suv_calculation(ds: Dataset) -> SuvCalculation:
    """SUVbw = C x weight(g) / (dose(Bq) x 2^(-Δt / T½)), with what it used and what it lacked.

    With DecayCorrection START, Δt runs from the injection to the scan start — SeriesDate/
    SeriesTime, or GE's private scan start where the series time is later than the
    acquisition's (QIBA) — and the date-shifted header gives the same interval: every date
    moves by the same whole days. With ADMIN the image is already decay-corrected to injection.
    """
    units = str(ds.get("Units", "")).upper()
    sequence = ds.get("RadiopharmaceuticalInformationSequence") or [Dataset()]
    drug = sequence[0]
    correction = str(ds.get("DecayCorrection", "")).upper()
    elapsed, scan_start = _elapsed(ds, drug) if correction == "START" else (None, "")
    calculation = SuvCalculation(
        None, units, _number(ds.get("PatientWeight")), _number(drug.get("RadionuclideTotalDose")),
        _number(drug.get("RadionuclideHalfLife")), correction, elapsed, (),
        _number(ds.get("PatientSize")), *_philips_scales(ds), scan_start=scan_start)
    factor, lacking = _bodyweight_factor(calculation)
    missing = tuple(str(reason) for reason in lacking)
    if factor is None and units == "CNTS" and calculation.vendor_suv_factor is not None:
        return replace(calculation, factor=calculation.vendor_suv_factor, missing=missing,
                       source="Philips SUV Scale Factor (7053,1000)")
    return replace(calculation, factor=factor, missing=missing)


PHILIPS_PET = "Philips PET Private Group"


def _philips_scales(ds: Dataset) -> tuple[float | None, float | None]:
    """(activity concentration scale, SUV scale) from Philips' private PET block, where present.

    A Philips PET in Units CNTS needs them (OHIF/Viewers#1418): counts x (7053,1009) are Bq/ml;
    (7053,1000) gives SUVbw directly. De-identification keeps both (PS3.15 Table E.3.10-1).
    """
    try:
        block = ds.private_block(0x7053, PHILIPS_PET)
    except KeyError:
        return None, None
    values = []
    for offset in (0x09, 0x00):
        try:
            values.append(_number(block[offset].value))
        except (KeyError, ValueError):
            values.append(None)
    return values[0], values[1]


def _bodyweight_factor(calculation: SuvCalculation) -> tuple[float | None, list[Said]]:
    units, weight, dose = calculation.units, calculation.weight_kg, calculation.dose_bq
    half_life, correction = calculation.half_life_s, calculation.decay_correction
    elapsed = calculation.elapsed_s
    counts_in_bq = units == "CNTS" and calculation.activity_scale is not None
    missing = [reason for reason, lacking in (
        (Said.made(gettext_noop("Units is %(units)s, not BQML"),
                   {"units": units or Said(gettext_noop("empty"))}), units != "BQML" and not counts_in_bq),
        (Said(gettext_noop("no patient weight")), weight is None),
        (Said(gettext_noop("no injected dose")), dose is None),
        (Said(gettext_noop("no radionuclide half-life")), half_life is None),
        (Said.made(gettext_noop("decay correction %(correction)s (START or ADMIN needed)"),
                   {"correction": correction or Said(gettext_noop("not given"))}),
         correction not in {"START", "ADMIN"}),
        (Said(gettext_noop("no injection or series time")), correction == "START" and elapsed is None),
    ) if lacking]
    if missing or not (weight and dose and half_life):
        return None, missing
    decayed = dose if correction == "ADMIN" else dose * 2.0 ** (-(elapsed or 0.0) / half_life)
    return weight * 1000.0 / decayed * (calculation.activity_scale or 1.0 if counts_in_bq else 1.0), []


# Translators: SUV normalisations (QIBA names): body weight, lean body mass (two formulas), body
# surface area, ideal body weight; usually kept as they are.
SUV_METHODS = {"bw": gettext_noop("SUVbw"), "lbm_james": gettext_noop("SUVlbm (James)"),
               "lbm_janma": gettext_noop("SUVlbm (Janmahasatian)"), "bsa": gettext_noop("SUVbsa"),
               "ibw": gettext_noop("SUVibw")}
"""The normalisations a reader may choose (QIBA / PS3.16 CID 85), and how each is shown (English here,
the record's; ``gettext`` where a reader is shown one)."""


def _body_measure(method: str, weight: float, height_m: float | None,
                  sex: str) -> tuple[float | None, list[Said]]:
    """What the decayed dose is divided by: grams of body weight, lean or ideal mass, or cm² of
    body surface (SUVbsa). James (1976) and Janmahasatian (2005) lean body mass; Du Bois
    surface area; ideal body weight 48.0 + 1.06 (45.5 + 0.91 for women) kg per cm above 152 cm."""
    if method == "bw":
        return weight * 1000.0, []
    missing = [reason for reason, lacking in (
        (Said(gettext_noop("no patient height")), height_m is None),
        (Said(gettext_noop("no patient sex (M or F)")), method != "bsa" and sex not in ("M", "F")),
    ) if lacking]
    if missing or height_m is None:
        return None, missing
    height_cm = height_m * 100.0
    male = sex == "M"
    if method == "lbm_james":
        kg = (1.10 * weight - 128 * (weight / height_cm) ** 2 if male
              else 1.07 * weight - 148 * (weight / height_cm) ** 2)
    elif method == "lbm_janma":
        bmi = weight / height_m ** 2
        kg = 9270 * weight / ((6680 + 216 * bmi) if male else (8780 + 244 * bmi))
    elif method == "ibw":
        kg = (48.0 + 1.06 * (height_cm - 152)) if male else (45.5 + 0.91 * (height_cm - 152))
    elif method == "bsa":
        return 0.007184 * weight ** 0.425 * height_cm ** 0.725 * 10_000.0, []
    else:
        raise ValueError(f"unknown SUV method {method!r}")
    if kg > 0:
        return kg * 1000.0, []
    return None, [Said(gettext_noop("the formula gives no positive mass for these values"))]


def suv_method_factor(calculation: dict[str, Any], *, method: str, sex: str = "",
                      weight_kg: float | None = None, dose_bq: float | None = None
                      ) -> tuple[float | None, list[Said]]:
    """Factor (per Bq/ml) of SUV ``method`` from a series' ``suv_calculation``, or what it lacks
    (words for the reader: :func:`rendering.said.said` translates each).

    ``weight_kg`` and ``dose_bq`` replace the header's where a reader entered them.
    """
    if method not in SUV_METHODS:
        raise ValueError(f"unknown SUV method {method!r}")
    known: dict[str, Any] = {name: calculation.get(name) for name in SuvCalculation.__dataclass_fields__}
    header = SuvCalculation(**{**known, "units": str(known["units"] or ""),
                               "decay_correction": str(known["decay_correction"] or ""), "missing": (),
                               "source": str(known["source"] or "header"),
                               "scan_start": str(known["scan_start"] or "")})
    header = replace(header, weight_kg=weight_kg or header.weight_kg, dose_bq=dose_bq or header.dose_bq)
    bodyweight, missing = _bodyweight_factor(header)
    if bodyweight is None or header.weight_kg is None:
        return None, missing
    measure, lacking = _body_measure(method, header.weight_kg, header.height_m, sex)
    if measure is None:
        return None, lacking
    return bodyweight * measure / (header.weight_kg * 1000.0), []


def suv_facts(calculation: dict[str, Any], entered: dict[str, float] | None = None) -> list[str]:
    """Every header value the factor used, as the reader is shown it (entered values marked), in the
    active language."""
    entered = entered or {}
    not_given = gettext("not given")
    # Translators: "Units" is the PET header's Units attribute (BQML, CNTS...), shown as it stands.
    facts = [gettext("Units %(units)s") % {"units": calculation.get("units") or not_given}]
    for name, key, unit, scale in ((gettext_noop("weight"), "weight_kg", "kg", 1.0),
                                   (gettext_noop("height"), "height_m", "m", 1.0),
                                   (gettext_noop("injected dose"), "dose_bq", "MBq", 1e-6),
                                   (gettext_noop("half-life"), "half_life_s", "s", 1.0)):
        value = entered.get(key) or calculation.get(key)
        if value:
            shown = {"name": gettext(name), "value": f"{float(value) * scale:.4g}", "unit": unit}
            facts.append((gettext("%(name)s %(value)s %(unit)s (entered)") if key in entered
                          else gettext("%(name)s %(value)s %(unit)s")) % shown)
    correction = calculation.get("decay_correction") or not_given
    elapsed = calculation.get("elapsed_s")
    if elapsed is None:
        facts.append(gettext("decay correction %(correction)s") % {"correction": correction})
    else:
        facts.append(gettext("decay correction %(correction)s, %(seconds)s s from injection to %(start)s") % {
            "correction": correction, "seconds": f"{float(elapsed):.0f}",
            "start": calculation.get("scan_start") or "SeriesTime"})
    if calculation.get("activity_scale"):
        facts.append(gettext("Philips activity concentration scale (7053,1009) %(scale)s")
                     % {"scale": f"{calculation['activity_scale']:.6g}"})
    if calculation.get("source") not in (None, "", "header"):
        facts.append(gettext("factor from %(source)s") % {"source": calculation["source"]})
    return facts


def suvbw_factor(ds: Dataset) -> float | None:
    """SUVbw per Bq/ml from a PET header, or None when the header does not allow it."""
    return suv_calculation(ds).factor
