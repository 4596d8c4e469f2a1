"""Benchmark the render engine and the worker pool on the phantom PET/CT (512x512x300 CT).

For each view type (MPR scroll, W/L change, slab MIP, oblique, fusion, 3-D interactive,
3-D still, and both with the PET fused over the CT in 3-D) it renders a sequence of
changing states at a 512x512 viewport and reports per-frame time including encoding
(p50/p95 ms), frames/s, and bytes/frame — once in-process and once through a
``RenderPool`` (request → worker → frame back, one request at a time, as one
interacting user). Prints one JSON document:

    python bench/render_engine.py [--data DIR] [--slices 300] [--frames 60] [--skip-pool]
                                  [--only 3d_interactive,3d_fused_interactive,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def scenarios(ct, pet, truth, frames: int) -> dict[str, list[dict]]:
    lesion = truth["lesions"][0]["center_mm"]
    x, y, z = lesion
    ct_layer = {"series_id": ct.series_id, "window_preset": "abdomen"}
    pet_layer = {"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "palette": "hot_iron",
                 "opacity": 0.5}
    base = {"view": "axial", "layers": [ct_layer], "width": 512, "height": 512, "quality": "interactive"}
    three_d = max(10, frames // 2)
    return {
        "mpr_scroll": [{**base, "focus_mm": [x, y, z + ((i % 100) - 50) * 2.0]} for i in range(frames)],
        "wl_change": [{**base, "focus_mm": lesion, "layers": [
            {"series_id": ct.series_id, "window_center": 40 + i * 3, "window_width": 400 + i * 7}]}
            for i in range(frames)],
        "slab_mip": [{**base, "view": "coronal", "focus_mm": [x, y + (i % 40) - 20, z],
                      "slab": {"mode": "mip", "thickness_mm": 20}} for i in range(frames)],
        "oblique": [{**base, "view": "oblique", "focus_mm": lesion,
                     "oblique_deg": [(i % 60) - 30, 15]} for i in range(frames)],
        "fusion": [{**base, "focus_mm": [x, y, z + ((i % 100) - 50) * 2.0], "layers": [ct_layer, pet_layer]}
                   for i in range(frames)],
        "mpr_still": [{**base, "quality": "still", "focus_mm": [x, y, z + ((i % 100) - 50) * 2.0]}
                      for i in range(max(10, frames // 3))],
        "3d_interactive": [{**base, "view": "3d", "preset3d": "ct_bone",
                            "camera3d": {"azimuth": (i * 6) % 360 - 180, "elevation": 10}}
                           for i in range(three_d)],
        "3d_still": [{**base, "view": "3d", "preset3d": "ct_bone", "quality": "still",
                      "camera3d": {"azimuth": (i * 20) % 360 - 180, "elevation": 10}} for i in range(8)],
        "3d_fused_interactive": [{**base, "view": "3d", "preset3d": "ct_bone",
                                  "layers": [ct_layer, pet_layer],
                                  "camera3d": {"azimuth": (i * 6) % 360 - 180, "elevation": 10}}
                                 for i in range(three_d)],
        "3d_fused_still": [{**base, "view": "3d", "preset3d": "ct_bone", "quality": "still",
                            "layers": [ct_layer, pet_layer],
                            "camera3d": {"azimuth": (i * 20) % 360 - 180, "elevation": 10}}
                           for i in range(8)],
        "pet_mip_interactive": [{**base, "view": "3d", "preset3d": "pet_mip", "layers": [
            {"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "palette": "inverted"}],
            "camera3d": {"azimuth": (i * 6) % 360 - 180}} for i in range(three_d)],
    }


def measure(render, states) -> dict:
    from rendering.viewstate import viewstate_from_dict

    parsed = [viewstate_from_dict(s) for s in states]
    started = time.perf_counter()
    first = render(parsed[0])
    cold_ms = (time.perf_counter() - started) * 1000
    times, sizes = [], []
    for state in parsed:
        started = time.perf_counter()
        frame = render(state)
        times.append((time.perf_counter() - started) * 1000)
        sizes.append(len(frame.data))
    return {
        "frames": len(times),
        "first_ms": round(cold_ms, 1),
        "p50_ms": round(_percentile(times, 0.5), 2),
        "p95_ms": round(_percentile(times, 0.95), 2),
        "fps": round(1000 * len(times) / sum(times), 1),
        "bytes_mean": round(sum(sizes) / len(sizes)),
        "bytes_max": max(sizes),
        "encoding": first.encoding.value,
        "frame_size": [first.width, first.height],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="var/bench/render_phantom")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    args = parser.parse_args()

    from imaging.phantom import phantom_write
    from rendering.engine import RenderEngine
    from rendering.testing import volumes_from_phantom
    from rendering.workers import RenderPool, SourceSpec

    data = Path(args.data)
    truth_file = data / "truth.json"
    if not truth_file.exists() or json.loads(truth_file.read_text())["ct"]["slices"] != args.slices:
        phantom_write(out_dir=data, slices=args.slices)
    started = time.perf_counter()
    ct, pet, truth = volumes_from_phantom(data)
    load_s = time.perf_counter() - started
    volumes = {ct.series_id: ct, pet.series_id: pet}
    plan = scenarios(ct, pet, truth, args.frames)
    if args.only:
        wanted = set(args.only.split(","))
        if wanted - set(plan):
            parser.error(f"no scenario {', '.join(sorted(wanted - set(plan)))}; there are {', '.join(plan)}")
        plan = {name: states for name, states in plan.items() if name in wanted}

    engine = RenderEngine()
    report: dict = {
        "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                    "platform": platform.platform()},
        "data": {"ct_shape": list(ct.shape), "ct_spacing_mm": list(ct.spacing), "pet_shape": list(pet.shape),
                 "volume_load_s": round(load_s, 2)},
        "viewport": [512, 512],
        "in_process": {},
    }
    for name, states in plan.items():
        report["in_process"][name] = measure(lambda s: engine.render(s, volumes), states)
    report["mapper_3d"] = engine.volume_renderer.mapper_kind

    if not args.skip_pool:
        spec = SourceSpec("rendering.testing:PhantomSource", {"root": str(data.resolve())})
        started = time.perf_counter()
        with RenderPool(sources={"phantom": spec}) as pool:
            report["pool"] = {"workers": pool.size, "start_s": round(time.perf_counter() - started, 2)}
            for name, states in plan.items():
                report["pool"][name] = measure(lambda s: pool.render_sync(s, source="phantom"), states)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
