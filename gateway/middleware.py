"""Response headers that every dynamic page carries.

Static assets are answered by WhiteNoise before this middleware runs and stay
cacheable; everything else may show patient data to an authenticated user,
so no browser or proxy may keep a copy.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_cache_control


class NoStoreMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        patch_cache_control(response, no_store=True, no_cache=True, private=True, max_age=0)
        response.headers["Pragma"] = "no-cache"
        response.headers.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        return response
