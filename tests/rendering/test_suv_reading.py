"""SUV methods and entered values of a reading: the factors against published reference values.

Reference values for a 75 kg, 175 cm man and woman, worked by hand from the
published formulas (James 1976; Janmahasatian et al. 2005; Du Bois 1916; the
ideal body weight QIBA names): lean body mass James 58.99 kg (man) / 53.07 kg
(woman), Janmahasatian 58.08 / 47.12 kg, body surface 1.906 m², ideal body
weight 72.38 / 66.43 kg. SUVbw is written out here from the decay law.
"""

from __future__ import annotations

import pytest

from imaging.suv import suv_method_factor
from rendering.protocol import Setting
from rendering.session import SeriesInfo, SessionError, ViewerSession

from .test_session_series import _geometry

DOSE_BQ, HALF_LIFE_S, ELAPSED_S = 370e6, 6586.2, 3600.0
HEADER = {"factor": None, "units": "BQML", "weight_kg": 75.0, "dose_bq": DOSE_BQ, "half_life_s": HALF_LIFE_S,
          "decay_correction": "START", "elapsed_s": ELAPSED_S, "missing": [], "height_m": 1.75,
          "method": "SUVbw"}
DECAYED = DOSE_BQ * 2 ** (-ELAPSED_S / HALF_LIFE_S)
REFERENCE = {  # (method, sex): grams (or cm²) the decayed dose is divided by
    ("bw", "M"): 75_000.0, ("lbm_james", "M"): 58_990.0, ("lbm_james", "F"): 53_066.0,
    ("lbm_janma", "M"): 58_080.0, ("lbm_janma", "F"): 47_118.0, ("bsa", "M"): 19_060.0,
    ("ibw", "M"): 72_380.0, ("ibw", "F"): 66_430.0,
}


@pytest.mark.parametrize(("method", "sex"), sorted(REFERENCE))
def test_each_method_divides_the_decayed_dose_by_its_published_body_measure(method, sex):
    factor, missing = suv_method_factor(HEADER, method=method, sex=sex)
    assert missing == []
    assert factor == pytest.approx(REFERENCE[(method, sex)] / DECAYED, rel=2e-3)


def _lacking(calculation: dict, **choice: object) -> list[str]:
    """What the method lacks, in English (the words are translated where a reader is shown them)."""
    return [str(reason) for reason in suv_method_factor(calculation, **choice)[1]]


def test_what_a_method_lacks_is_named_and_nothing_is_guessed():
    assert _lacking(HEADER, method="lbm_james", sex="") == ["no patient sex (M or F)"]
    assert _lacking({**HEADER, "height_m": None}, method="bsa", sex="M") == ["no patient height"]
    assert _lacking({**HEADER, "weight_kg": None}, method="bw") == ["no patient weight"]
    entered, missing = suv_method_factor({**HEADER, "weight_kg": None}, method="bw", weight_kg=80.0)
    assert missing == [] and entered == pytest.approx(80_000.0 / DECAYED)


def _pet(calculation: dict) -> SeriesInfo:
    geometry = {**_geometry(kind="volume", plane="axial", mpr=True), "modality": "PT",
                "suv": calculation.get("weight_kg") is not None, "suv_calculation": calculation}
    return SeriesInfo("5.1", "PT", "PET WB", geometry, number=1)


def test_a_chosen_method_reaches_every_pet_layer_and_ready_says_so():
    session = ViewerSession(study_uid="9.9", series=[_pet(HEADER)])
    session.suv.sex = "F"
    assert session.state(0).layers[0].suv_factor is None  # SUVbw: the header's own factor
    session.suv_choose("lbm_janma")
    assert session.state(0).layers[0].suv_factor == pytest.approx(REFERENCE[("lbm_janma", "F")] / DECAYED,
                                                                   rel=2e-3)
    wire = session.describe()["suv"]
    assert wire["method"] == "lbm_janma" and wire["label"] == "SUVlbm (Janmahasatian)"
    assert wire["series"]["5.1"]["missing"] == []


def test_a_method_that_cannot_be_computed_is_refused_and_the_reading_keeps_its_own():
    session = ViewerSession(study_uid="9.9", series=[_pet(HEADER)])
    with pytest.raises(SessionError, match="sex"):
        session.suv_choose("ibw")
    assert session.suv.method == "bw"
    with pytest.raises(SessionError, match="SUV method"):
        session.suv_choose("suvmax")


def test_an_entered_weight_turns_a_pet_without_one_into_suv():
    session = ViewerSession(study_uid="9.9", series=[_pet({**HEADER, "weight_kg": None})])
    layer = session.views[0].layers[0]
    assert layer["window_unit"] == "native"
    with pytest.raises(SessionError, match="SUV calibration"):
        session.apply_setting(Setting(view=0, layer=0, name="window_preset", value="suv_0_5"))
    session.suv_enter("5.1", weight_kg=80.0, dose_bq=None)
    state = session.state(0).layers[0]
    assert state.window_unit.value == "suv"
    assert state.suv_factor == pytest.approx(80_000.0 / DECAYED)
    session.apply_setting(Setting(view=0, layer=0, name="window_preset", value="suv_0_10"))
    with pytest.raises(SessionError, match="PET or NM"):
        session.suv_enter("no-such-series", weight_kg=80.0, dose_bq=None)


def test_the_reader_is_shown_every_header_value_the_factor_used_and_what_was_entered():
    header = {**HEADER, "scan_start": "GE scan start (0009,100D)"}
    session = ViewerSession(study_uid="9.9", series=[_pet(header)])
    session.suv_enter("5.1", weight_kg=80.0, dose_bq=None)
    used = session.describe()["suv"]["series"]["5.1"]["used"]
    assert "weight 80 kg (entered)" in used and "injected dose 370 MBq" in used
    assert "Units BQML" in used and f"half-life {HALF_LIFE_S:.4g} s" in used
    assert f"decay correction START, {ELAPSED_S:.0f} s from injection to GE scan start (0009,100D)" in used
