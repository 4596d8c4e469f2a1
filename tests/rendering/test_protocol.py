"""Every client message is validated; anything malformed is a ProtocolError, nothing else."""

import json
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rendering import protocol
from rendering.protocol import (
    MAX_MESSAGE_BYTES,
    Acknowledge,
    Encoding,
    Input,
    Layout,
    Probe,
    ProtocolError,
    Resize,
    Setting,
    frame_pack,
    frame_unpack,
    message_parse,
)


@pytest.mark.parametrize(("raw", "expected"), [
    ('{"type":"ack","view":1,"seq":7}', Acknowledge(1, 7)),
    ('{"type":"input","view":0,"op":"scroll","delta":-3}', Input(0, "scroll", {"delta": -3})),
    ('{"type":"input","view":0,"op":"window","dc":10,"dw":-5.5}',
     Input(0, "window", {"dc": 10.0, "dw": -5.5})),
    ('{"type":"input","view":2,"op":"reset"}', Input(2, "reset", {})),
    ('{"type":"set","view":0,"name":"palette","value":"hot_iron","layer":1}',
     Setting(0, "palette", "hot_iron", 1)),
    ('{"type":"set","view":0,"name":"slab_thickness","value":10}',
     Setting(0, "slab_thickness", 10.0, 0)),
    ('{"type":"layout","layout":"petct"}', Layout("petct")),
    ('{"type":"probe","view":3,"x":10,"y":500}', Probe(3, 10, 500)),
    ('{"type":"resize","view":0,"width":512,"height":384}', Resize(0, 512, 384)),
    ('{"type":"hang","rule":12}', protocol.Hang(12)),
    ('{"type":"hang_save","name":"PET/CT coronal first"}', protocol.HangSave("PET/CT coronal first")),
    ('{"type":"hang_delete","rule":3}', protocol.HangDelete(3)),
    ('{"type":"report_capture","view":2}', protocol.ReportCapture(2, "")),
    ('{"type":"report_capture","view":0,"caption":"PET MIP"}', protocol.ReportCapture(0, "PET MIP")),
    ('{"type":"set","view":1,"name":"fuse","value":"2.25.7"}', Setting(1, "fuse", "2.25.7", 0)),
    ('{"type":"reg_run","fixed":"2.25.1","moving":"2.25.2"}', protocol.RegRun("2.25.1", "2.25.2", "rigid")),
    ('{"type":"reg_run","fixed":"2.25.1","moving":"2.25.2","kind":"affine"}',
     protocol.RegRun("2.25.1", "2.25.2", "affine")),
    ('{"type":"reg_landmarks","fixed_view":0,"moving_view":1,"fixed_points":[[1,2],[3,4],[5,6]],'
     '"moving_points":[[7,8],[9,10],[11,12]],"refine":true}',
     protocol.RegLandmarks(0, 1, ((1, 2), (3, 4), (5, 6)), ((7, 8), (9, 10), (11, 12)), True)),
    ('{"type":"reg_nudge","registration":4,"translate_mm":[1,0,-2.5],"rotate_deg":[0,1,0]}',
     protocol.RegNudge(4, (1, 0, -2.5), (0, 1, 0))),
    ('{"type":"reg_decide","registration":4,"decision":"accept"}', protocol.RegDecide(4, "accept")),
])
def test_valid_messages_parse(raw, expected):
    assert message_parse(raw, views=4) == expected


@pytest.mark.parametrize(("raw", "code"), [
    (None, "not_text"),
    ("x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
    ("{not json", "not_json"),
    ("[1,2]", "bad_message"),
    ('{"type": 3}', "bad_message"),
    ('{"type":"download","series":"1"}', "unknown_type"),
    ('{"type":"ack","view":16,"seq":1}', "bad_value"),
    ('{"type":"ack","view":-1,"seq":1}', "bad_value"),
    ('{"type":"ack","view":0}', "missing_field"),
    ('{"type":"ack","view":0,"seq":1,"extra":1}', "unknown_field"),
    ('{"type":"tab","action":"explode"}', "bad_value"),
    ('{"type":"tab","action":"add","layout":"5x5"}', "bad_value"),
    ('{"type":"tab","action":"select","tab":16}', "bad_value"),
    ('{"type":"tab","action":"select"}', "missing_field"),
    ('{"type":"tab","action":"close","tab":0,"view":0}', "unknown_field"),
    ('{"type":"tab","action":"rename","tab":0,"name":""}', "bad_value"),
    ('{"type":"tab","action":"rename","tab":0,"name":"' + "n" * 41 + '"}', "bad_value"),
    ('{"type":"tab","action":"link","tab":0,"linked":"yes"}', "bad_value"),
    ('{"type":"tab","action":"duplicate","view":4}', "bad_value"),
    ('{"type":"grid","rows":5,"columns":1,"cells":[[0,0,1,1]]}', "bad_value"),
    ('{"type":"grid","rows":1,"columns":2,"cells":[[0,0,1,1]]}', "bad_value"),
    ('{"type":"grid","rows":1,"columns":1,"cells":[[0,0,1,1]],"name":"x"}', "unknown_field"),
    ('{"type":"grid_save","rows":1,"columns":1,"cells":[[0,0,1,1]]}', "missing_field"),
    ('{"type":"swap","view":0,"other":4}', "bad_value"),
    ('{"type":"bookmark","action":"open"}', "missing_field"),
    ('{"type":"bookmark","action":"open","bookmark":0}', "bad_value"),
    ('{"type":"bookmark","action":"save","name":"a\\u0000b"}', "bad_value"),
    ('{"type":"bookmark","action":"share","bookmark":1,"share":"../x","shared":true}', "bad_value"),
    ('{"type":"input","view":0,"op":"scroll","delta":1.5}', "bad_value"),
    ('{"type":"input","view":0,"op":"scroll","delta":true}', "bad_value"),
    ('{"type":"input","view":0,"op":"scroll","delta":NaN}', "not_json"),
    ('{"type":"input","view":0,"op":"scroll","delta":1e400}', "bad_value"),
    ('{"type":"input","view":0,"op":"export_voxels"}', "unknown_operation"),
    ('{"type":"set","view":0,"name":"voxels","value":"1.2.3"}', "unknown_setting"),
    ('{"type":"set","view":0,"name":"series","value":"1.2/../3 x"}', "bad_value"),
    ('{"type":"thumbnails","series":"1"}', "unknown_field"),
    ('{"type":"input","view":0,"op":"frame","index":-1}', "bad_value"),
    ('{"type":"set","view":0,"name":"palette","value":"neon"}', "bad_value"),
    ('{"type":"layout","layout":"9x9"}', "bad_value"),
    ('{"type":"open","study":"1.2.3/../4"}', "bad_value"),
    ('{"type":"open","study":"1.2.3","series":"4"}', "unknown_field"),
    ('{"type":"open"}', "missing_field"),
    ('{"type":"keep","label":""}', "bad_value"),
    ('{"type":"keep","label":"a\\nb"}', "bad_value"),
    ('{"type":"keep","label":"' + "x" * 65 + '"}', "bad_value"),
    ('{"type":"keep"}', "missing_field"),
    ('{"type":"forget","finding":0}', "bad_value"),
    ('{"type":"forget","finding":"3"}', "bad_value"),
    ('{"type":"findings_store","study":"1.2.3"}', "unknown_field"),
    ('{"type":"relabel","finding":3}', "missing_field"),
    ('{"type":"relabel","finding":3,"label":""}', "bad_value"),
    ('{"type":"relabel","finding":0,"label":"x"}', "bad_value"),
    ('{"type":"suv","method":"suvmax"}', "bad_value"),
    ('{"type":"suv"}', "missing_field"),
    ('{"type":"suv_inputs","series":"1.2"}', "missing_field"),
    ('{"type":"suv_inputs","series":"1.2","weight_kg":0}', "bad_value"),
    ('{"type":"suv_inputs","series":"1.2","dose_mbq":1e9}', "bad_value"),
    ('{"type":"suv_inputs","series":"1.2","weight_kg":70,"height_m":1.8}', "unknown_field"),
    ('{"type":"measure","view":0,"tool":"laser","points":[[1,1],[2,2]]}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"line","points":[[1,1]]}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"polygon","points":[[1,1],[2,2]]}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"line","points":[[1,1],[2,"x"]]}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"line","points":[[1,1],[2,2,3]]}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"sphere","points":[[1,1]]}', "missing_field"),
    ('{"type":"measure","view":0,"tool":"sphere","points":[[1,1]],"radius_mm":900}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"line","points":[[1,1],[2,2]],"radius_mm":5}', "unknown_field"),
    ('{"type":"measure","view":0,"tool":"threshold","points":[[1,1]],"radius_mm":20,"fraction":1.5}',
     "bad_value"),
    ('{"type":"measure","view":0,"tool":"sphere","points":[[1,1]],"radius_mm":9,"fraction":0.4}',
     "unknown_field"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1],[2,2]]}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[]}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"fraction":0.4}', "unknown_field"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"seed":[1,1]}', "unknown_field"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"mode":"watershed"}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"mode":true}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"mode":"range","value":1.5}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"value":0}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"mode":"confidence","value":9}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"value":"0.3"}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"radius_mm":0.5}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"grow","points":[[1,1]],"radius_mm":900}', "bad_value"),
    ('{"type":"measure","view":0,"tool":"sphere","points":[[1,1]],"radius_mm":9,"mode":"range"}',
     "unknown_field"),
    ('{"type":"measure","view":0,"tool":"threshold","points":[[1,1]],"radius_mm":9,"value":0.4}',
     "unknown_field"),
    ('{"type":"resize","view":0,"width":100000,"height":10}', "bad_value"),
    ("[" * 100000, "too_large"),
    ('{"type":"hang"}', "missing_field"),
    ('{"type":"hang","rule":0}', "bad_value"),
    ('{"type":"hang","rule":"3"}', "bad_value"),
    ('{"type":"hang","rule":1.5}', "bad_value"),
    ('{"type":"hang","rule":true}', "bad_value"),
    ('{"type":"hang","rule":1,"name":"x"}', "unknown_field"),
    ('{"type":"hang","layout":"2x2"}', "unknown_field"),
    ('{"type":"hang_save"}', "missing_field"),
    ('{"type":"hang_save","name":""}', "bad_value"),
    ('{"type":"hang_save","name":"a\\tb"}', "bad_value"),
    ('{"type":"hang_save","name":"' + "x" * 65 + '"}', "bad_value"),
    ('{"type":"hang_save","name":["x"]}', "bad_value"),
    ('{"type":"hang_save","name":"mine","rule":{"match":{},"views":[]}}', "unknown_field"),
    ('{"type":"hang_delete"}', "missing_field"),
    ('{"type":"hang_delete","rule":-1}', "bad_value"),
    ('{"type":"hang_delete","rule":9007199254740993}', "bad_value"),
    ('{"type":"hang_delete","rule":2,"view":0}', "unknown_field"),
    ('{"type":"chart","view":0,"tool":"sphere","points":[[1,1]],"radius_mm":9}', "missing_field"),
    ('{"type":"chart","view":0,"kind":"scatter","tool":"sphere","points":[[1,1]],"radius_mm":9}',
     "bad_value"),
    ('{"type":"chart","view":0,"kind":["histogram"],"tool":"sphere","points":[[1,1]],"radius_mm":9}',
     "bad_value"),
    ('{"type":"chart","view":0,"kind":"histogram","tool":"line","points":[[1,1],[2,2]]}', "bad_value"),
    ('{"type":"chart","view":0,"kind":"tac","tool":"ellipse","points":[[1,1],[2,2]]}', "bad_value"),
    ('{"type":"chart","view":0,"kind":"histogram","points":[[1,1]],"radius_mm":9}', "missing_field"),
    ('{"type":"chart","view":0,"kind":"histogram","tool":"sphere","points":[[1,1]]}', "missing_field"),
    ('{"type":"chart","view":0,"kind":"tac","tool":"sphere","points":[[1,1]],"radius_mm":900}', "bad_value"),
    ('{"type":"chart","view":4,"kind":"tac","tool":"sphere","points":[[1,1]],"radius_mm":9}', "bad_value"),
    ('{"type":"chart","view":0,"kind":"histogram","tool":"ellipse","points":[[1,1]]}', "bad_value"),
    ('{"type":"chart","view":0,"kind":"histogram","tool":"polygon","points":[[1,1],[2,"x"],[3,3]]}',
     "bad_value"),
    ('{"type":"chart","view":0,"kind":"histogram","tool":"ellipse","points":[[1,1],[2,2]],"radius_mm":5}',
     "unknown_field"),
    ('{"type":"chart","view":0,"kind":"histogram","tool":"sphere","points":[[1,1]],"radius_mm":9,"bins":512}',
     "unknown_field"),
    ('{"type":"chart","view":0,"kind":"tac","tool":"sphere","points":[[1,1]],"radius_mm":9,"series":"1.2"}',
     "unknown_field"),
    ('{"type":"seg_new","view":0}', "missing_field"),
    ('{"type":"seg_new","view":0,"label":"a","series":"1.2"}', "unknown_field"),
    ('{"type":"seg_open","segmentation":0}', "bad_value"),
    ('{"type":"seg_edit","view":0,"tool":"grow","segment":1,"points":[[1,1]],"low":5}', "missing_field"),
    ('{"type":"seg_edit","view":0,"tool":"grow","segment":1,"points":[[1,1]],"low":5,"high":1}', "bad_value"),
    ('{"type":"seg_edit","view":0,"tool":"grow","segment":1,"points":[],"low":0,"high":1}', "bad_value"),
    ('{"type":"seg_edit","view":0,"tool":"brush","segment":33,"points":[[1,1]],"radius_mm":2}', "bad_value"),
    ('{"type":"seg_edit","view":0,"tool":"brush","segment":1,"points":[[1,1]],"radius_mm":2,"planar":1}',
     "bad_value"),
    ('{"type":"seg_edit","view":0,"tool":"brush","segment":1,"points":[[1,1]],"radius_mm":99}', "bad_value"),
    ('{"type":"seg_edit","view":0,"tool":"brush","segment":1,"points":' + json.dumps([[1, 1]] * 65)
     + ',"radius_mm":2}', "bad_value"),
    ('{"type":"seg_edit","view":0,"tool":"largest","segment":1,"min_ml":1}', "unknown_field"),
    ('{"type":"seg_edit","view":0,"tool":"otsu","segment":1,"points":[[1,1]]}', "missing_field"),
    ('{"type":"seg_edit","view":0,"tool":"paint_all","segment":1}', "bad_value"),
    ('{"type":"seg_segment","segment":1,"colour":"red"}', "bad_value"),
    ('{"type":"seg_segment","segment":1,"visible":"yes"}', "bad_value"),
    ('{"type":"seg_undo","steps":3}', "unknown_field"),
    ('{"type":"seg_store","fractional":1}', "bad_value"),
    ('{"type":"seg_store","fractional":"true"}', "bad_value"),
    ('{"type":"seg_store","binary":true}', "unknown_field"),
    ('{"type":"report_capture","view":9}', "bad_value"),
    ('{"type":"report_capture","view":0,"caption":"' + "x" * 129 + '"}', "bad_value"),
    ('{"type":"reg_run","fixed":"2.25.1","moving":"2.25.2","kind":"deformable"}', "bad_value"),
    ('{"type":"reg_run","fixed":"2.25.1"}', "missing_field"),
    ('{"type":"reg_landmarks","fixed_view":0,"moving_view":1,"fixed_points":[[1,2],[3,4]],'
     '"moving_points":[[7,8],[9,10]]}', "bad_value"),
    ('{"type":"reg_landmarks","fixed_view":0,"moving_view":1,"fixed_points":[[1,2],[3,4],[5,6]],'
     '"moving_points":[[7,8],[9,10],[11,12],[1,1]]}', "bad_value"),
    ('{"type":"reg_nudge","registration":4,"translate_mm":[1,0],"rotate_deg":[0,0,0]}', "bad_value"),
    ('{"type":"reg_nudge","registration":4,"translate_mm":[0,0,0],"rotate_deg":[0,90,0]}', "bad_value"),
    ('{"type":"reg_decide","registration":4,"decision":"maybe"}', "bad_value"),
])
def test_malformed_messages_are_refused_with_a_code(raw, code):
    with pytest.raises(ProtocolError) as refused:
        message_parse(raw, views=4)
    assert refused.value.code == code


def test_deeply_nested_json_is_refused_cleanly():
    with pytest.raises(ProtocolError):
        message_parse('{"type":"ack","view":' + "[" * 3000 + "]" * 3000 + "}", views=1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                      children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "view", "seq", "op", "delta", "name", "value",
                                        "layer", "layout", "x", "y", "width", "height", "dc", "rule"]),
                       json_values | st.sampled_from(["ack", "input", "set", "layout", "probe",
                                                      "resize", "scroll", "palette", "hang", "hang_save",
                                                      "hang_delete"]),
                       max_size=7))
def test_any_json_object_parses_or_raises_protocol_error(message):
    try:
        parsed = message_parse(json.dumps(message), views=2)
    except ProtocolError:
        return
    assert type(parsed).__name__ in {"Acknowledge", "Input", "Setting", "Layout", "Probe",
                                     "Resize", "Hang", "HangSave", "HangDelete"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_parser(raw):
    with pytest.raises(ProtocolError):
        message_parse(raw, views=1)


def test_frames_round_trip():
    packed = frame_pack(view=2, sequence=41, quality=1, encoding=Encoding.PNG, width=512,
                        height=256, overlay={"wl": [40, 400]}, image=b"\x89PNG...")
    frame = frame_unpack(packed)
    assert (frame.view, frame.sequence, frame.quality, frame.encoding) == (2, 41, 1, Encoding.PNG)
    assert (frame.width, frame.height, frame.overlay, frame.image) == (512, 256, {"wl": [40, 400]},
                                                                       b"\x89PNG...")
    with pytest.raises(ProtocolError):
        frame_unpack(b"XXXX" + packed[4:])


def test_every_message_type_the_parser_returns_has_a_handler():
    from rendering.consumers import MESSAGE_HANDLERS

    assert set(MESSAGE_HANDLERS) == set(typing.get_args(protocol.Message))


def _example(rule: dict) -> object:
    if "choices" in rule:
        return rule["choices"][-1]
    if rule.get("identifier"):
        return "1.2.3"
    if rule.get("flag"):
        return True
    return rule["max"]


def test_what_the_vocabulary_announces_the_parser_accepts_and_nothing_beyond():
    announced = protocol.vocabulary({})
    for name, rule in announced["settings"].items():
        parsed = message_parse(json.dumps({"type": "set", "view": 0, "name": name,
                                           "value": _example(rule)}), views=1)
        assert parsed == Setting(0, name, _example(rule), 0)
        if "choices" in rule:
            with pytest.raises(ProtocolError):
                message_parse(json.dumps({"type": "set", "view": 0, "name": name, "value": "unannounced"}),
                              views=1)
        elif "max" in rule:
            with pytest.raises(ProtocolError):
                message_parse(json.dumps({"type": "set", "view": 0, "name": name,
                                          "value": rule["max"] + 1}), views=1)
    for op, arguments in announced["inputs"].items():
        message = {"type": "input", "view": 0, "op": op, **{n: _example(r) for n, r in arguments.items()}}
        assert message_parse(json.dumps(message), views=1).operation == op
    for layout in announced["layouts"]:
        assert message_parse(json.dumps({"type": "layout", "layout": layout}), views=1) == Layout(layout)
    for tool, rules in announced["segment_tools"].items():
        low, _ = rules["points"]
        message = {"type": "seg_edit", "view": 0, "tool": tool, "segment": 1, "points": [[5, 5]] * low,
                   **{name: _example(rule) for name, rule in rules["settings"].items()}}
        edit = message_parse(json.dumps(message), views=1)
        assert (edit.tool, len(edit.points)) == (tool, low)
        with pytest.raises(ProtocolError):
            message_parse(json.dumps({**message, "unannounced": 1}), views=1)
    assert json.loads(json.dumps(announced)) == announced


def test_the_announced_palettes_are_the_engine_s_own_colours():
    from rendering.engine.palettes import LUTS, palette_stops
    from rendering.viewstate import Palette

    stops = palette_stops()
    assert set(stops) == set(protocol.SETTINGS["palette"].choices)  # type: ignore[union-attr]
    for name, colours in stops.items():
        lut = LUTS[Palette(name)]
        assert colours[0] == "#" + bytes(lut[0]).hex() and colours[-1] == "#" + bytes(lut[255]).hex()


def test_a_seg_store_is_binary_unless_it_asks_for_fractional():
    for raw, fractional in (('{"type":"seg_store"}', False),
                            ('{"type":"seg_store","fractional":false}', False),
                            ('{"type":"seg_store","fractional":true}', True)):
        assert message_parse(raw, views=1) == protocol.SegStore(fractional=fractional)


def test_a_prior_is_asked_for_by_study_uid():
    assert message_parse('{"type":"open","study":"1.2.840.5"}', views=1) == protocol.OpenStudy("1.2.840.5")


def test_an_acknowledgement_may_name_a_view_a_layout_change_just_removed():
    assert message_parse('{"type":"ack","view":3,"seq":9}', views=1) == Acknowledge(3, 9)


def test_a_measurement_names_its_tool_and_points():
    parsed = message_parse('{"type":"measure","view":1,"tool":"sphere","points":[[10.5,20]],"radius_mm":15}',
                           views=2)
    assert parsed == protocol.Measure(1, "sphere", ((10.5, 20.0),), 15.0)
    polygon = message_parse(json.dumps({"type": "measure", "view": 0, "tool": "polygon",
                                        "points": [[0, 0], [5, 0], [5, 5], [0, 5]]}), views=1)
    assert polygon.points[2] == (5.0, 5.0) and polygon.radius_mm is None


def test_a_finding_is_kept_by_label_and_forgotten_by_number():
    kept = message_parse('{"type":"keep","label":"liver lesion 1"}', views=1)
    assert kept == protocol.Keep("liver lesion 1")
    assert message_parse('{"type":"forget","finding":12}', views=1) == protocol.Forget(12)
    assert message_parse('{"type":"findings_store"}', views=1) == protocol.StoreFindings()
    renamed = message_parse('{"type":"relabel","finding":3,"label":"node"}', views=1)
    assert renamed == protocol.Relabel(3, "node")
    chosen = message_parse('{"type":"suv","method":"lbm_janma"}', views=1)
    assert chosen == protocol.SuvMethod("lbm_janma")
    entered = message_parse('{"type":"suv_inputs","series":"1.2","dose_mbq":185}', views=1)
    assert entered == protocol.SuvInputs("1.2", None, 185.0)


def test_a_threshold_voi_defaults_to_41_percent():
    parsed = message_parse('{"type":"measure","view":0,"tool":"threshold","points":[[5,5]],"radius_mm":20}',
                           views=1)
    assert (parsed.radius_mm, parsed.fraction) == (20.0, 0.41)


def test_a_grown_voi_takes_its_seed_and_defaults_its_box_and_rule():
    parsed = message_parse('{"type":"measure","view":0,"tool":"grow","points":[[5,6]]}', views=1)
    assert parsed == protocol.Measure(0, "grow", ((5.0, 6.0),), protocol.GROW_BOX_MM, mode="range",
                                      value=protocol.GROW_MODES["range"][1])
    confident = message_parse(json.dumps({"type": "measure", "view": 0, "tool": "grow", "points": [[5, 6]],
                                          "radius_mm": 20, "mode": "confidence"}), views=1)
    assert (confident.radius_mm, confident.mode, confident.value) == (20.0, "confidence", 2.5)
    ranged = message_parse(json.dumps({"type": "measure", "view": 0, "tool": "grow", "points": [[5, 6]],
                                       "value": 0.3}), views=1)
    assert (ranged.mode, ranged.value, ranged.fraction) == ("range", 0.3, None)
    assert "grow" in protocol.vocabulary({})["measure_tools"]


def test_a_chart_names_its_kind_and_the_region_as_a_measurement_gives_it():
    parsed = message_parse('{"type":"chart","view":1,"kind":"tac","tool":"sphere","points":[[10.5,20]],'
                           '"radius_mm":15}', views=2)
    assert parsed == protocol.Chart("tac", protocol.Measure(1, "sphere", ((10.5, 20.0),), 15.0))
    histogram = message_parse(json.dumps({"type": "chart", "view": 0, "kind": "histogram",
                                          "tool": "threshold", "points": [[5, 5]], "radius_mm": 20}), views=1)
    assert histogram.kind == "histogram"
    assert (histogram.region.radius_mm, histogram.region.fraction) == (20.0, 0.41)
    announced = protocol.vocabulary({})["charts"]
    assert announced == {"histogram": ["ellipse", "rectangle", "polygon", "sphere", "threshold", "grow"],
                         "tac": ["sphere"]}
    for kind, tools in announced.items():
        assert set(tools) <= set(protocol.MEASURE_TOOLS)
        for tool in tools:
            low, _ = protocol.MEASURE_TOOLS[tool]
            message = {"type": "chart", "view": 0, "kind": kind, "tool": tool, "points": [[1, 1]] * low,
                       **({"radius_mm": 10} if tool in protocol.SIZED_TOOLS else {})}
            assert message_parse(json.dumps(message), views=1).region.tool == tool
