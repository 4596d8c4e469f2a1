"""The viewer's crop box: a view's base series cropped to a box in 2-D and 3-D (``crop``).

The box belongs to the view (its state's ``crop_mm``) and is drawn by the render engine
(:mod:`rendering.engine.crop`); nothing is made or stored, so it is not a reporting act.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rendering import protocol


async def crop_on(consumer: Any, message: protocol.Crop) -> None:
    consumer._render(consumer.session.crop_set(message.view, message.box))


CROP_HANDLERS: dict[type, Callable[[Any, Any], Awaitable[None]]] = {protocol.Crop: crop_on}
