"""Benchmark segmentation (issue #17) in process, each figure beside a peer run in the same rounds.

On a CT-like 512 x 512 x N volume (0.8 x 0.8 x 1.5 mm, soft tissue with noise, enhancing
spheres) and on the phantom CT written by ``imaging.phantom`` (for the SEG's source images):

* region growing from a seed (``segmentation_apply``, tool ``grow``) — peer: SimpleITK's
  ``ConnectedThreshold`` called directly on the same array (what the edit wraps);
* a brush stroke to an updated frame: a 16-point planar stroke applied to the kept map, then
  a 512 x 512 still of the view with the segmentation over it — peer: the same still without
  the segmentation layer (the frame cost alone);
* a SEG of 5 segments over the N source images (``segmentation_dicom_build``'s highdicom call,
  label map renumbered) — peer: pydicom writing the N source images back to bytes;
* an ONNX model (3x3x3 mean filter and threshold, 2 channels) over the whole volume in 64³
  tiles on this machine's cores (recorded; no peer).

Prints one JSON document:

    python bench/segment.py [--slices 300] [--rounds 5]

Issue #17's targets: growing <= 1 s, brush stroke to frame <= 50 ms, SEG of 5 segments <= 2 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.test")

import django  # noqa: E402

django.setup()

from rendering.engine.core import RenderEngine  # noqa: E402
from rendering.segment_ops import segmentation_apply, segmentation_replay  # noqa: E402
from rendering.viewstate import viewstate_from_dict  # noqa: E402
from rendering.volume import Presentation, Volume  # noqa: E402

TARGETS_MS = {"grow": 1000.0, "brush_to_frame": 50.0, "seg_5_segments": 2000.0}


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000, 1),
            "samples": len(ordered)}


def _timed(call: Any, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _volume(slices: int) -> tuple[Volume, list[float]]:
    rng = np.random.default_rng(1)
    shape, spacing = (slices, 512, 512), (1.5, 0.8, 0.8)
    values = (40.0 + rng.normal(0.0, 8.0, shape)).astype(np.float32)
    k, j, i = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    centre = (shape[0] // 2, 256, 256)
    inside = ((k - centre[0]) * spacing[0]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2 \
        + ((i - centre[2]) * spacing[2]) ** 2 <= 30.0 ** 2
    values[inside] = 200.0
    volume = Volume(voxels=values, spacing=spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                    modality="CT", series_id="bench", frame_of_reference_uid="1.2")
    return volume, [float(v) for v in volume.index_to_patient(centre)]


def _grow(volume: Volume, seed: list[float], rounds: int) -> dict[str, Any]:
    op = {"tool": "grow", "segment": 1, "seeds_mm": [seed], "low": 120.0, "high": 400.0}
    image = sitk.GetImageFromArray(volume.voxels)
    index = [int(v) for v in np.rint(volume.patient_to_index(np.asarray(seed)))[::-1]]
    ours, peer = [], []
    for _ in range(rounds):
        labels = np.zeros(volume.shape, dtype=np.uint8)
        ours += _timed(lambda labels=labels: segmentation_apply(labels, volume, op), 1)
        peer += _timed(lambda: sitk.ConnectedThreshold(image, seedList=[index], lower=120.0, upper=400.0), 1)
    return {"ours": _summary(ours), "peer_sitk": _summary(peer),
            "ratio_p50": round(statistics.median(ours) / statistics.median(peer), 2)}


def _brush(volume: Volume, centre: list[float], rounds: int) -> dict[str, Any]:
    engine = RenderEngine()
    labels = segmentation_replay(volume, [])
    stroke = [[centre[0] + 2.0 * n, centre[1], centre[2]] for n in range(16)]
    op = {"tool": "brush", "segment": 1, "points_mm": stroke, "radius_mm": 5.0, "normal": [0.0, 0.0, 1.0]}
    base = {"series_id": volume.series_id, "window_center": 40, "window_width": 400}
    state = viewstate_from_dict({"view": "axial", "focus_mm": centre, "width": 512, "height": 512,
                                 "quality": "still", "layers": [
                                     base, {"series_id": "seg", "window_center": 0.5, "window_width": 1.0}]})
    alone = viewstate_from_dict({"view": "axial", "focus_mm": centre, "width": 512, "height": 512,
                                 "quality": "still", "layers": [base]})
    look = Presentation(kind="label", label_style=((1, "#e6194b", 0.5),))

    def stroke_to_frame() -> None:
        edited = labels.copy()
        segmentation_apply(edited, volume, op)
        seg = replace(volume, voxels=edited, modality="SEG", series_id="seg", presentation=look)
        engine.render(state, {volume.series_id: volume, "seg": seg})

    ours, peer = [], []
    for _ in range(rounds * 4):
        ours += _timed(stroke_to_frame, 1)
        peer += _timed(lambda: engine.render(alone, {volume.series_id: volume}), 1)
    return {"ours": _summary(ours), "peer_frame_only": _summary(peer),
            "ratio_p50": round(statistics.median(ours) / statistics.median(peer), 2),
            "note": "includes copying the kept map, as a worker building the next revision does"}


def _seg(slices: int, rounds: int) -> dict[str, Any]:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from imaging.phantom import phantom_write
    from imaging.segmentation_dicom import ALGORITHM

    with tempfile.TemporaryDirectory() as folder:
        truth = phantom_write(out_dir=Path(folder), slices=slices, patients=1, seed=2)
        files = sorted((Path(folder) / truth["patients"][0]["folder"] / "CT").glob("*.dcm"))
        sources = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in files),
                         key=lambda ds: float(ds.ImagePositionPatient[2]))
    labels = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), dtype=np.uint8)
    for n in range(5):
        labels[20 + 10 * n: 30 + 10 * n, 100 + 40 * n: 160 + 40 * n, 200:260] = n + 1
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=f"segment {n}", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type="SEMIAUTOMATIC",
        algorithm_identification=ALGORITHM) for n in range(1, 6)]

    def build() -> None:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=labels, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=1,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="bench",
            manufacturer_model_name="bench", software_versions="1", device_serial_number="0")
        seg.save_as(io.BytesIO(), enforce_file_format=True)

    def peer() -> None:
        for ds in sources:
            ds.save_as(io.BytesIO(), enforce_file_format=False)

    ours, copies = _timed(build, rounds), _timed(peer, rounds)
    return {"ours": _summary(ours), "peer_pydicom_write_sources": _summary(copies),
            "ratio_p50": round(statistics.median(ours) / statistics.median(copies), 2)}


def _onnx(volume: Volume) -> dict[str, Any]:
    from onnx import TensorProto, helper

    from rendering.engine.onnx_models import manifest_parse, model_session, segment_volume

    kernel = helper.make_tensor("kernel", TensorProto.FLOAT, [1, 1, 3, 3, 3], [1.0 / 27] * 27)
    nodes = [helper.make_node("Conv", ["image", "kernel"], ["mean"], kernel_shape=[3, 3, 3], pads=[1] * 6),
             helper.make_node("Greater", ["mean", "threshold"], ["above"]),
             helper.make_node("Cast", ["above"], ["fore"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "fore"], ["back"]),
             helper.make_node("Concat", ["back", "fore"], ["scores"], axis=1)]
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, "z", "y", "x"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, "z", "y", "x"])],
        [kernel, helper.make_tensor("threshold", TensorProto.FLOAT, [], [120.0]),
         helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    manifest = manifest_parse({
        "name": "bench", "version": "1", "input_size": [64, 64, 64], "input_spacing_mm": list(volume.spacing),
        "normalisation": {"kind": "none"}, "overlap": 0.25, "provenance": {},
        "output": {"kind": "argmax", "labels": [{"value": 1, "name": "bright", "colour": "#ff0000"}]}})
    session = model_session(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tiles: list[int] = []
    start = time.perf_counter()
    labels = segment_volume(volume.voxels, volume.spacing, manifest, session,
                            progress=lambda done, total: tiles.append(total))
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "tiles": tiles[-1] if tiles else 0,
            "labelled_voxels": int(np.count_nonzero(labels)), "cores": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    volume, centre = _volume(args.slices)
    figures = {"grow": _grow(volume, centre, args.rounds),
               "brush_to_frame": _brush(volume, centre, args.rounds),
               "seg_5_segments": _seg(args.slices, args.rounds), "onnx_64_tiles": _onnx(volume)}
    met = {name: figures[name]["ours"]["p50_ms"] <= target for name, target in TARGETS_MS.items()}
    print(json.dumps({"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                  "load_at_start": os.getloadavg()[0]},
                      "volume": {"shape": list(volume.shape), "spacing_mm": list(volume.spacing)},
                      "figures": figures, "targets_ms": TARGETS_MS, "targets_met_p50": met}, indent=2))


if __name__ == "__main__":
    main()
