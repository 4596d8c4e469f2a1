"""Websocket routes of the viewer. A path not listed here is refused."""

from __future__ import annotations

from django.urls import URLPattern, re_path

from rendering.consumers import ViewerConsumer

websocket_urlpatterns: list[URLPattern] = [
    re_path(r"^ws/viewer/(?P<study>[0-9.]{1,64})/$", ViewerConsumer.as_asgi(), name="viewer"),
]
