"""Render engine: view state + volumes -> encoded frame with overlay facts (see docs/rendering.md)."""

from rendering.engine.core import (
    FrameOfReferenceError,
    LayerInfo,
    MissingVolumeError,
    Overlay,
    ProbeResult,
    ProbeValue,
    RenderedFrame,
    RenderEngine,
    RenderError,
    default_engine,
    probe,
    render,
)

__all__ = [
    "FrameOfReferenceError",
    "LayerInfo",
    "MissingVolumeError",
    "Overlay",
    "ProbeResult",
    "ProbeValue",
    "RenderEngine",
    "RenderError",
    "RenderedFrame",
    "default_engine",
    "probe",
    "render",
]
