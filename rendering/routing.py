"""Websocket routes of the viewer. A path not listed here is refused."""

from __future__ import annotations

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
