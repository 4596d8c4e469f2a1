"""Hanging rules as data: strict parsing, and how a session matches and hangs them."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from rendering.hanging import (
    Hanging,
    HangingRuleError,
    description_fragment,
    hanging_name_clean,
    hanging_parse,
)
from rendering.protocol import Setting
from rendering.session import SeriesInfo, SessionError, ViewerSession
from tests.rendering.test_session_series import SAGITTAL, _geometry

PETCT = {
    "match": {"modalities": ["CT", "PT"], "description": "whole body"},
    "views": [
        {"kind": "coronal", "layers": [{"modality": "CT"}]},
        {"kind": "axial", "layers": [{"modality": "PT", "description": "nac", "palette": "inverted"}]},
        {"kind": "axial", "layers": [{"modality": "CT", "description": "soft"},
                                     {"modality": "PT", "palette": "hot_iron", "opacity": 0.4}]},
        {"kind": "3d", "layers": [{"modality": "PT"}], "preset3d": "pet_mip"},
    ],
}


MR_AXIAL = {"match": {"modalities": ["MR"]}, "views": [{"kind": "axial", "layers": [{"modality": "MR"}]}]}


def _rule(data: dict) -> Hanging:
    return hanging_parse(data=data)


def _volume(uid: str, modality: str, description: str, number: int, **geometry) -> SeriesInfo:
    return SeriesInfo(uid, modality, description,
                      _geometry(kind="volume", plane="axial", mpr=True, **geometry), number=number)


def _petct() -> ViewerSession:
    """Two CTs and two PETs, in series order: CT AC, PET AC, CT soft tissue, PET NAC."""
    return ViewerSession(study_uid="9.9", series=[
        _volume("1.1", "CT", "CT AC 3mm", 1), _volume("1.2", "PT", "PET AC", 2),
        _volume("1.3", "CT", "CT Soft Tissue", 3), _volume("1.4", "PT", "PET NAC", 4)])


def _uids(session: ViewerSession) -> list[list[str]]:
    return [[layer["series_id"] for layer in view.layers] for view in session.views]


# --- parsing ----------------------------------------------------------------------------------

def test_a_rule_round_trips_through_its_json_form():
    rule = _rule(PETCT)
    assert rule.grid == "2x2" and rule.modalities == ("CT", "PT") and rule.description == "whole body"
    assert rule.views[2].layers[1].palette == "hot_iron" and rule.views[2].layers[1].opacity == 0.4
    assert rule.views[0].layers[0].palette is None and rule.views[0].layers[0].opacity == 1.0
    assert _rule(rule.wire()) == rule
    assert [len(_rule({"match": {"modalities": ["CT"]}, "views": PETCT["views"][:n]}).views)
            for n in (1, 2, 3)] == [1, 2, 3]
    assert [_rule({"match": {"modalities": ["CT"]}, "views": PETCT["views"][:n]}).grid
            for n in (1, 2, 3, 4)] == ["1x1", "1x2", "1x3", "2x2"]


def _broken(path: str, value=None, *, delete: bool = False) -> dict:
    data = copy.deepcopy(PETCT)
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if delete:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(("data", "words"), [
    ([], "must be an object"),
    ({"match": {"modalities": ["CT"]}}, "needs views"),
    (_broken("extra", 1), "unknown field"),
    (_broken("match.modalities", []), "1 to 8"),
    (_broken("match.modalities", ["CT", "CT"]), "twice"),
    (_broken("match.modalities", ["ct"]), "DICOM modality"),
    (_broken("match.modalities", [f"M{i}" for i in range(9)]), "1 to 8"),
    (_broken("match.modalities", "CT"), "list"),
    (_broken("match.description", ""), "printable"),
    (_broken("match.description", "x" * 65), "1 to 64"),
    (_broken("match.description", "a\nb"), "printable"),
    (_broken("match.series", "1.2.3"), "unknown field"),
    (_broken("views", []), "1 to 4"),
    (_broken("views", PETCT["views"] + PETCT["views"][:1]), "1 to 4"),
    (_broken("views.0.kind", "4d"), "kind must be one of"),
    (_broken("views.0.kind", delete=True), "needs kind"),
    (_broken("views.0.layers", []), "1 to 4"),
    (_broken("views.0.layers", [{"modality": "CT"}] * 5), "1 to 4"),
    (_broken("views.0.preset3d", "pet_mip"), "3d views only"),
    (_broken("views.3.preset3d", "hot_pink"), "preset3d must be one of"),
    (_broken("views.0.zoom", 2), "unknown field"),
    (_broken("views.1.layers.0.palette", "neon"), "palette must be one of"),
    (_broken("views.1.layers.0.opacity", 1.5), "0 to 1"),
    (_broken("views.1.layers.0.opacity", True), "0 to 1"),
    (_broken("views.1.layers.0.opacity", float("nan")), "0 to 1"),
    (_broken("views.1.layers.0.opacity", "0.5"), "0 to 1"),
    (_broken("views.1.layers.0.series_id", "1.2"), "unknown field"),
    (_broken("views.1.layers.0.modality", delete=True), "needs modality"),
    (_broken("views.1.layers.0.description", 7), "printable"),
])
def test_a_malformed_rule_is_refused_naming_the_fault(data, words):
    with pytest.raises(HangingRuleError, match=words):
        hanging_parse(data=data)


def test_a_rule_s_name_is_trimmed_and_bounded():
    assert hanging_name_clean(name="  PET/CT coronal first ") == "PET/CT coronal first"
    for bad in ("", "   ", "x" * 65, "tab\there", None, 7):
        with pytest.raises(HangingRuleError):
            hanging_name_clean(name=bad)
    assert description_fragment("a\x00b" + "c" * 80) == "ab" + "c" * 62


# --- matching and hanging ---------------------------------------------------------------------

def test_a_rule_hangs_each_layer_by_modality_and_description_fragment():
    session = _petct()
    assert session.layout == "petct"
    session.views[0].width, session.views[0].height = 300, 200
    assert session.hanging_apply(_rule(PETCT), description="PET-CT Whole Body") == [0, 1, 2, 3]
    assert session.layout == "2x2"
    assert _uids(session) == [["1.1"], ["1.4"], ["1.3", "1.2"], ["1.2"]]
    assert [view.kind for view in session.views] == ["coronal", "axial", "axial", "3d"]
    assert session.views[1].layers[0]["palette"] == "inverted"
    fused = session.views[2].layers[1]
    assert (fused["palette"], fused["opacity"]) == ("hot_iron", 0.4)
    assert session.views[0].layers[0]["palette"] == "grey"
    assert session.views[3].preset3d == "pet_mip"
    assert (session.views[0].width, session.views[0].height) == (300, 200), "a view keeps its size"
    session.state(2)  # a valid view state for the workers


def test_a_later_layer_of_the_same_modality_takes_the_next_series_else_the_first_again():
    rule = _rule({"match": {"modalities": ["CT"]},
                  "views": [{"kind": "axial", "layers": [{"modality": "CT"}]}] * 3})
    session = _petct()
    session.hanging_apply(rule, description="")
    assert session.layout == "1x3"
    assert _uids(session) == [["1.1"], ["1.3"], ["1.1"]]
    pet_twice = _rule({"match": {"modalities": ["PT"]},
                       "views": [{"kind": "axial", "layers": [{"modality": "PT", "description": "AC"}]}] * 2})
    session.hanging_apply(pet_twice, description="")
    assert _uids(session) == [["1.2"], ["1.4"]], "'AC' is in 'PET NAC' too: the next one"


@pytest.mark.parametrize(("data", "description", "why"), [
    ({"match": {"modalities": ["CT", "MR"]}, "views": [{"kind": "axial", "layers": [{"modality": "CT"}]}]},
     "", "no MR series"),
    ({"match": {"modalities": ["CT"], "description": "brain"},
      "views": [{"kind": "axial", "layers": [{"modality": "CT"}]}]},
     "PET-CT whole body", "described 'brain'"),
    ({"match": {"modalities": ["CT"]},
      "views": [{"kind": "axial", "layers": [{"modality": "CT", "description": "lung"}]}]},
     "", "view 1 needs a CT series described 'lung'"),
    ({"match": {"modalities": ["CT"]},
      "views": [{"kind": "axial", "layers": [{"modality": "CT"}]},
                {"kind": "axial", "layers": [{"modality": "NM"}]}]}, "", "view 2 needs a NM series"),
])
def test_a_rule_that_does_not_fit_is_refused_saying_why_and_the_views_stay(data, description, why):
    session = _petct()
    before = _uids(session)
    assert not session.hanging_fits(_rule(data), description=description)
    with pytest.raises(SessionError, match=why):
        session.hanging_apply(_rule(data), description=description)
    assert _uids(session) == before and session.layout == "petct"


def test_native_is_the_series_own_plane_and_volume_kinds_need_a_volume():
    sagittal = np.array(SAGITTAL).T.tolist()
    session = ViewerSession(study_uid="9.9", series=[
        SeriesInfo("1.1", "MR", "sag T1", _geometry(kind="volume", plane="sagittal", mpr=True,
                                                    direction=sagittal), number=1),
        SeriesInfo("1.2", "CR", "chest", _geometry(kind="images", plane="image", mpr=False,
                                                   shape=(1, 300, 200), invert=True), number=2)])
    native = _rule({"match": {"modalities": ["MR", "CR"]},
                    "views": [{"kind": "native", "layers": [{"modality": "MR"}]},
                              {"kind": "native", "layers": [{"modality": "CR"}]}]})
    session.hanging_apply(native, description="")
    assert [view.kind for view in session.views] == ["sagittal", "native"]
    assert session.views[1].layers[0]["palette"] == "inverted", "a picture keeps its own default"
    for kind in ("axial", "3d"):
        reformatted = _rule({"match": {"modalities": ["CR"]},
                             "views": [{"kind": kind, "layers": [{"modality": "CR"}]}]})
        with pytest.raises(SessionError, match="that reformats"):
            session.hanging_apply(reformatted, description="")
    fused_pictures = _rule({"match": {"modalities": ["CR"]}, "views": [
        {"kind": "native", "layers": [{"modality": "CR"}, {"modality": "MR"}]}]})
    assert not session.hanging_fits(fused_pictures, description="")


def test_at_open_the_first_fitting_rule_hangs_and_without_one_the_default_stays():
    session = _petct()
    brain = _rule({"match": {"modalities": ["CT"], "description": "brain"},
                   "views": [{"kind": "axial", "layers": [{"modality": "CT"}]}]})
    mr = _rule(MR_AXIAL)
    assert session.hanging_first([brain, mr], description="whole body") is None
    assert session.layout == "petct"
    assert session.hanging_first([mr, _rule(PETCT), brain], description="Whole Body") == 1
    assert session.layout == "2x2" and _uids(session)[1] == ["1.4"]
    assert _petct().hanging_first([], description="") is None


def test_a_3d_view_without_a_preset_takes_the_modality_s_default():
    rule = _rule({"match": {"modalities": ["CT", "PT"]},
                  "views": [{"kind": "3d", "layers": [{"modality": "CT"}]},
                            {"kind": "3d", "layers": [{"modality": "PT"}]}]})
    session = _petct()
    session.hanging_apply(rule, description="")
    assert [view.preset3d for view in session.views] == ["ct_bone", "pet_mip"]


def test_the_views_on_screen_become_a_rule_that_hangs_them_again():
    session = _petct()
    session.apply_setting(Setting(2, "palette", "rainbow", 1))
    session.apply_setting(Setting(2, "opacity", 0.7, 1))
    session.apply_setting(Setting(0, "kind", "sagittal", 0))
    session.apply_setting(Setting(3, "volume_preset", "ct_bone", 0))
    before = ([view.kind for view in session.views], _uids(session),
              [[(layer["palette"], layer["opacity"]) for layer in view.layers] for view in session.views],
              session.views[3].preset3d)
    saved = session.hanging_of_views()
    assert saved.modalities == ("CT", "PT")
    assert saved.views[1].layers[0].description == "PET AC"
    assert _rule(saved.wire()) == saved

    again = _petct()
    again.layout_apply("1x1")
    again.hanging_apply(_rule(saved.wire()), description="")
    after = ([view.kind for view in again.views], _uids(again),
             [[(layer["palette"], layer["opacity"]) for layer in view.layers] for view in again.views],
             again.views[3].preset3d)
    assert after == before and again.layout == "2x2"


def test_a_rule_matches_the_study_opened_and_keeps_a_prior_s_view_as_a_prior_layer():
    session = _petct()
    prior = [SeriesInfo("3.1", "MR", "old", _geometry(kind="volume", plane="axial", mpr=True),
                        number=1, study="8.8")]
    session.study_add("8.8", prior, [])
    mr = _rule(MR_AXIAL)
    assert not session.hanging_fits(mr, description=""), "a prior's series are not this study's"
    session.layout_apply("compare")
    kept = session.hanging_of_views()
    assert [[layer.prior for layer in view.layers] for view in kept.views] == [[False], [True]]
    assert kept.modalities == ("CT",) and kept.prior_modalities == {"MR"}
    assert session.hanging_fits(kept, description="")
    alone = _petct()
    assert not alone.hanging_fits(kept, description=""), "no prior open: the rule does not fit"
    session.layout_apply("1x1")
    session.apply_setting(Setting(0, "series", "3.1", 0))
    with pytest.raises(SessionError, match="priors"):
        session.hanging_of_views()


def test_a_prior_layer_round_trips_and_must_be_a_flag():
    rule = {"match": {"modalities": ["CT"]},
            "views": [{"kind": "axial", "layers": [{"modality": "CT"}]},
                      {"kind": "axial", "layers": [{"modality": "CT", "prior": True}]}]}
    parsed = hanging_parse(data=rule)
    assert parsed.prior_modalities == {"CT"} and hanging_parse(data=parsed.wire()) == parsed
    with pytest.raises(HangingRuleError):
        hanging_parse(data={**rule, "views": [{"kind": "axial", "layers": [{"modality": "CT", "prior": 1}]}]})
