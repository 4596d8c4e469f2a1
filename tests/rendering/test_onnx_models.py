"""Segmentation model slots: manifests, verified model files and sliding-window ONNX inference.

The models are built here with ``onnx.helper``; every truth is computed with numpy.
"""

from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from rendering.engine import onnx_models
from rendering.engine.onnx_models import (
    ModelError,
    manifest_parse,
    model_file_verify,
    model_session,
    segment_volume,
    segment_volume_scored,
)

OPSET = 17
IR_VERSION = 8
DYNAMIC_INPUT = [1, 1, "z", "y", "x"]


def model_bytes(nodes, initializers, channels) -> bytes:
    graph = helper.make_graph(
        nodes, "test_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, DYNAMIC_INPUT)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, channels, "z", "y", "x"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def above_model(threshold: float) -> bytes:
    """Identity 1x1x1 Conv then [1 - (x > t), x > t]: argmax is "voxel > t"."""
    initializers = [
        helper.make_tensor("kernel", TensorProto.FLOAT, [1, 1, 1, 1, 1], [1.0]),
        helper.make_tensor("threshold", TensorProto.FLOAT, [], [threshold]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "kernel"], ["convolved"], kernel_shape=[1, 1, 1]),
        helper.make_node("Greater", ["convolved", "threshold"], ["above"]),
        helper.make_node("Cast", ["above"], ["foreground"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "foreground"], ["background"]),
        helper.make_node("Concat", ["background", "foreground"], ["scores"], axis=1),
    ]
    return model_bytes(nodes, initializers, channels=2)


def sigmoid_model(scale: float, offset: float, *, channels: int = 2) -> bytes:
    """A 1x1x1 Conv (weight ``scale``, bias ``offset``) then a sigmoid p: [1 - p, p] (or [p]).

    Its output at a voxel depends on that voxel alone, so every tile gives the same there.
    """
    initializers = [
        helper.make_tensor("kernel", TensorProto.FLOAT, [1, 1, 1, 1, 1], [scale]),
        helper.make_tensor("bias", TensorProto.FLOAT, [1], [offset]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "kernel", "bias"], ["convolved"], kernel_shape=[1, 1, 1]),
        helper.make_node("Sigmoid", ["convolved"], ["scores" if channels == 1 else "foreground"]),
    ]
    if channels == 2:
        nodes += [
            helper.make_node("Sub", ["one", "foreground"], ["background"]),
            helper.make_node("Concat", ["background", "foreground"], ["scores"], axis=1),
        ]
    return model_bytes(nodes, initializers, channels=channels)


def sigmoid_truth(values, scale: float, offset: float):
    """The sigmoid model's p in float64 and p quantised to 0..255, from its definition."""
    probability = 1.0 / (1.0 + np.exp(-(scale * np.asarray(values, dtype=np.float64) + offset)))
    return probability, np.rint(probability * 255).astype(np.uint8)


def undecidable(probability, *, margin=1e-3):
    """Where float32 inference may round p * 255 or p against 0.5 either way."""
    scaled = probability * 255
    return (np.abs(scaled - np.floor(scaled) - 0.5) < margin) | (np.abs(probability - 0.5) < margin)


def identity_model() -> bytes:
    return model_bytes([helper.make_node("Identity", ["image"], ["scores"])], [], channels=1)


def session_of(data: bytes):
    return model_session(data, providers=["CPUExecutionProvider"], intra_op_num_threads=1)


LABEL = {"value": 1, "name": "lesion", "colour": "#ff8800"}


def manifest_data(**overrides):
    data = {
        "name": "sphere finder",
        "version": "1.0",
        "input_size": [16, 16, 16],
        "input_spacing_mm": [1.0, 1.0, 1.0],
        "normalisation": {"kind": "none"},
        "output": {"kind": "argmax", "labels": [LABEL]},
        "provenance": {"author": "test", "licence": "CC0"},
    }
    data.update(overrides)
    return data


def sphere(shape, spacing, radius_mm, inside=1000.0, outside=-1000.0):
    """A volume with a sphere of ``radius_mm`` at its centre, and the sphere's mask."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    mask = z**2 + y**2 + x**2 <= radius_mm**2
    return np.where(mask, inside, outside).astype(np.float32), mask


class Progress:
    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done, total):
        self.calls.append((done, total))


# --- inference --------------------------------------------------------------------------------------------


def test_labels_equal_the_threshold_truth_and_the_volume_is_tiled():
    rng = np.random.default_rng(3)
    voxels, _ = sphere((20, 40, 40), (1.0, 1.0, 1.0), radius_mm=8)
    voxels += rng.normal(0, 300, voxels.shape).astype(np.float32)
    manifest = manifest_parse(manifest_data())
    progress = Progress()
    session = session_of(above_model(200.0))

    labels = segment_volume(voxels, (1.0, 1.0, 1.0), manifest, session, progress=progress)

    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, (voxels > 200.0).astype(np.uint8))
    done, total = progress.calls[-1]
    assert total > 1
    assert done == total
    assert [d for d, _ in progress.calls] == list(range(total + 1))


def test_a_resampled_sphere_keeps_its_volume_and_the_labels_keep_the_input_grid():
    spacing, radius = (2.0, 0.8, 0.8), 12.0
    voxels, _ = sphere((24, 60, 60), spacing, radius)
    manifest = manifest_parse(manifest_data(input_spacing_mm=[1.5, 1.5, 1.5]))
    progress = Progress()

    labels = segment_volume(voxels, spacing, manifest, session_of(above_model(0.0)), progress=progress)

    assert labels.shape == voxels.shape
    labelled_ml = np.count_nonzero(labels == 1) * math.prod(spacing) / 1000
    planted_ml = 4 / 3 * math.pi * radius**3 / 1000
    assert labelled_ml == pytest.approx(planted_ml, rel=0.10)
    centre = (np.array(voxels.shape) - 1) / 2
    np.testing.assert_allclose(np.argwhere(labels == 1).mean(axis=0), centre, atol=0.5)
    assert progress.calls[-1][1] > 1


def test_a_volume_smaller_than_the_tile_is_padded_and_cropped_back():
    voxels, mask = sphere((6, 9, 11), (1.0, 1.0, 1.0), radius_mm=3)
    manifest = manifest_parse(manifest_data())

    labels = segment_volume(voxels, (1.0, 1.0, 1.0), manifest, session_of(above_model(0.0)))

    np.testing.assert_array_equal(labels, mask.astype(np.uint8))


def threshold_manifest(normalisation, threshold, value=7):
    label = {**LABEL, "value": value}
    return manifest_parse(manifest_data(normalisation=normalisation,
                                        output={"kind": "threshold", "threshold": threshold, "label": label}))


def assert_passes(labels, expected_input, threshold, value):
    """The labels are ``value`` where the model input exceeds the threshold (near-ties skipped)."""
    decidable = np.abs(expected_input - threshold) > 1e-4
    expected = np.where(expected_input > threshold, value, 0)
    np.testing.assert_array_equal(labels[decidable], expected[decidable])
    assert decidable.mean() > 0.99
    assert 0 < (expected[decidable] == value).mean() < 1


def test_window_normalisation_clips_and_scales_to_zero_one():
    rng = np.random.default_rng(5)
    voxels = rng.uniform(-400, 600, (18, 20, 20)).astype(np.float32)
    manifest = threshold_manifest({"kind": "window", "low": -100, "high": 300}, threshold=0.3)

    labels = segment_volume(voxels, (1.0, 1.0, 1.0), manifest, session_of(identity_model()))

    expected_input = (np.clip(voxels.astype(np.float64), -100, 300) + 100) / 400
    assert_passes(labels, expected_input, 0.3, value=7)


@pytest.mark.parametrize(("threshold", "expected"), [(1.0, 0), (-0.001, 7)])
def test_window_normalisation_saturates_at_zero_and_one(threshold, expected):
    voxels = np.full((16, 16, 16), 5000.0, dtype=np.float32)
    voxels[:8] = -5000.0
    manifest = threshold_manifest({"kind": "window", "low": -100, "high": 300}, threshold=threshold)

    labels = segment_volume(voxels, (1.0, 1.0, 1.0), manifest, session_of(identity_model()))

    assert (labels == expected).all()


def test_zscore_normalisation_uses_the_whole_volume_mean_and_deviation():
    rng = np.random.default_rng(9)
    voxels = rng.gamma(2.0, 50.0, (20, 24, 24)).astype(np.float32) + 40
    manifest = threshold_manifest({"kind": "zscore"}, threshold=1.0, value=3)

    labels = segment_volume(voxels, (1.0, 1.0, 1.0), manifest, session_of(identity_model()))

    values = voxels.astype(np.float64)
    assert_passes(labels, (values - values.mean()) / values.std(), 1.0, value=3)


def test_argmax_labels_without_a_channel_are_refused():
    three_labels = [LABEL, {**LABEL, "value": 2}, {**LABEL, "value": 3}]
    manifest = manifest_parse(manifest_data(output={"kind": "argmax", "labels": three_labels}))
    voxels = np.zeros((16, 16, 16), dtype=np.float32)

    with pytest.raises(ModelError, match="channels"):
        segment_volume(voxels, (1.0, 1.0, 1.0), manifest, session_of(above_model(0.0)))


# --- model file and session -------------------------------------------------------------------------------


SCALE, OFFSET = 0.01, -0.5


@pytest.mark.parametrize(("output", "channels"), [
    ({"kind": "argmax", "labels": [LABEL]}, 2),
    ({"kind": "threshold", "threshold": 0.5, "label": {**LABEL, "value": 4}}, 1),
])
def test_each_label_keeps_the_model_s_probability_quantised_over_every_tile(output, channels):
    rng = np.random.default_rng(11)
    voxels = rng.uniform(-600, 700, (20, 40, 40)).astype(np.float32)
    manifest = manifest_parse(manifest_data(output=output))
    progress = Progress()

    session = session_of(sigmoid_model(SCALE, OFFSET, channels=channels))

    scored = segment_volume_scored(voxels, (1.0, 1.0, 1.0), manifest, session, progress=progress)

    value = manifest.output.labels[0].value
    probability, quantised = sigmoid_truth(voxels, SCALE, OFFSET)
    decidable = ~undecidable(probability)
    assert progress.calls[-1][1] > 1 and decidable.mean() > 0.99
    assert list(scored.probabilities) == [value]
    stored = scored.probabilities[value]
    assert stored.dtype == np.uint8 and stored.shape == voxels.shape
    np.testing.assert_array_equal(stored[decidable], quantised[decidable])
    assert np.abs(stored.astype(int) - quantised).max() <= 1
    assert np.any(quantised == 255) and np.any(quantised == 0)
    np.testing.assert_array_equal(scored.labels[decidable], np.where(probability > 0.5, value, 0)[decidable])


def test_probabilities_come_back_onto_the_volume_s_grid_where_the_model_s_differs():
    voxels = np.full((12, 30, 30), -300.0, dtype=np.float32)
    voxels[6:] = 250.0
    manifest = manifest_parse(manifest_data(input_spacing_mm=[1.0, 1.0, 1.0]))
    session = session_of(sigmoid_model(SCALE, OFFSET))

    scored = segment_volume_scored(voxels, (2.0, 1.0, 1.0), manifest, session)

    stored = scored.probabilities[1]
    assert stored.shape == voxels.shape
    _, (low, high) = sigmoid_truth([-300.0, 250.0], SCALE, OFFSET)
    assert (stored[:5] == low).all() and (stored[7:] == high).all()
    np.testing.assert_array_equal(segment_volume(voxels, (2.0, 1.0, 1.0), manifest, session), scored.labels)


def test_outputs_beyond_zero_to_one_are_scores_and_give_no_probabilities():
    voxels = np.linspace(-2.0, 3.0, 16 * 16 * 16, dtype=np.float32).reshape(16, 16, 16)
    manifest = threshold_manifest({"kind": "none"}, threshold=0.5)

    scored = segment_volume_scored(voxels, (1.0, 1.0, 1.0), manifest, session_of(identity_model()))

    assert scored.probabilities == {}
    np.testing.assert_array_equal(scored.labels, np.where(voxels > 0.5, 7, 0))


def test_model_file_verify_accepts_the_registered_file_and_refuses_a_tampered_one(tmp_path):
    data = above_model(0.0)
    registered = hashlib.sha256(data).hexdigest()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)

    assert model_file_verify(path, registered) == data
    assert model_file_verify(path, registered.upper()) == data

    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    path.write_bytes(bytes(tampered))
    with pytest.raises(ModelError, match="does not match the registered SHA-256"):
        model_file_verify(path, registered)


def test_model_file_verify_refuses_a_malformed_digest_and_an_oversized_file(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"0123456789")
    digest = hashlib.sha256(b"0123456789").hexdigest()
    with pytest.raises(ModelError, match="64 hexadecimal"):
        model_file_verify(path, digest[:-1])
    monkeypatch.setattr(onnx_models, "MAX_MODEL_BYTES", 9)
    with pytest.raises(ModelError, match="larger than"):
        model_file_verify(path, digest)


def test_default_providers_prefer_cuda_and_never_take_a_remote_one(monkeypatch):
    available = ["AzureExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    assert onnx_models.default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available[::2])
    assert onnx_models.default_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="providers"):
        model_session(identity_model(), providers=["AzureExecutionProvider"])


# --- manifest ---------------------------------------------------------------------------------------------


def test_a_full_manifest_parses_with_its_defaults():
    manifest = manifest_parse(manifest_data(normalisation={"kind": "window", "low": -160, "high": 240}))

    assert manifest.name == "sphere finder"
    assert manifest.input_size == (16, 16, 16)
    assert manifest.input_spacing_mm == (1.0, 1.0, 1.0)
    assert (manifest.normalisation.kind, manifest.normalisation.low, manifest.normalisation.high) == (
        "window", -160.0, 240.0)
    assert manifest.output.kind == "argmax"
    assert [(label.value, label.name, label.colour) for label in manifest.output.labels] == [
        (1, "lesion", "#ff8800")]
    assert manifest.overlap == 0.25
    assert manifest.provenance == {"author": "test", "licence": "CC0"}


def without(key):
    def change(data):
        del data[key]
    return change


def setting(key, value):
    def change(data):
        data[key] = value
    return change


def label_setting(key, value):
    def change(data):
        data["output"]["labels"][0][key] = value
    return change


REFUSED = {
    "missing name": without("name"),
    "missing input_size": without("input_size"),
    "missing output": without("output"),
    "missing provenance": without("provenance"),
    "unknown key": setting("weights_url", "https://example.org/model.onnx"),
    "empty name": setting("name", ""),
    "long name": setting("name", "n" * 65),
    "size over 256": setting("input_size", [16, 257, 16]),
    "size zero": setting("input_size", [0, 16, 16]),
    "two sizes": setting("input_size", [16, 16]),
    "fractional size": setting("input_size", [16, 16.5, 16]),
    "negative spacing": setting("input_spacing_mm", [1, -1, 1]),
    "unknown normalisation": setting("normalisation", {"kind": "minmax"}),
    "window without high": setting("normalisation", {"kind": "window", "low": 0}),
    "inverted window": setting("normalisation", {"kind": "window", "low": 10, "high": 0}),
    "label value 0": label_setting("value", 0),
    "label value 256": label_setting("value", 256),
    "label name missing": lambda data: data["output"]["labels"][0].pop("name"),
    "short colour": label_setting("colour", "#fff"),
    "named colour": label_setting("colour", "orange"),
    "duplicate values": setting("output", {"kind": "argmax", "labels": [LABEL, {**LABEL, "name": "b"}]}),
    "no labels": setting("output", {"kind": "argmax", "labels": []}),
    "threshold without label": setting("output", {"kind": "threshold", "threshold": 0.5}),
    "unknown output": setting("output", {"kind": "softmax", "labels": [LABEL]}),
    "overlap 0.9": setting("overlap", 0.9),
    "negative overlap": setting("overlap", -0.1),
    "provenance not strings": setting("provenance", {"epochs": 300}),
    "provenance over 4 KB": setting("provenance", {"notes": "x" * 4100}),
}


@pytest.mark.parametrize("change", REFUSED.values(), ids=REFUSED.keys())
def test_manifest_parse_refuses(change):
    data = copy.deepcopy(manifest_data())
    change(data)
    with pytest.raises(ModelError):
        manifest_parse(data)


def test_manifest_parse_accepts_an_overlap_just_below_the_limit():
    assert manifest_parse(manifest_data(overlap=0.89)).overlap == 0.89
