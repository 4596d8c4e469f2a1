"""System checks for the render settings (``rendering.E001``, ``rendering.W001``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def render_mode_check(app_configs: Any = None, **kwargs: Any) -> list:
    from rendering.pool import REMOTE, RENDER_MODES

    if settings.RENDER_MODE not in RENDER_MODES:
        return [Error(f"GATEWAY_RENDER_MODE must be one of {', '.join(RENDER_MODES)}",
                      id="rendering.E001")]
    layer: dict[str, Any] = settings.CHANNEL_LAYERS.get(settings.RENDER_CHANNEL_LAYER, {})
    if settings.RENDER_MODE == REMOTE and str(layer.get("BACKEND", "")).endswith("InMemoryChannelLayer"):
        return [Warning("remote rendering over an in-memory channel layer reaches only render "
                        "workers inside this process; set REDIS_URL", id="rendering.W001")]
    return []
