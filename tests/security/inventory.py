"""Every HTTP route and websocket route, enumerated from the resolvers, with a sample URL each."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver, resolve

# Sample values for route parameters, by parameter name. A new parameter
# name without a sample fails the inventory loudly.
SAMPLES = {
    "object_id": "1",
    "app_label": "accounts",
    "content_type_id": "1",
    "id": "1",
    "url": "x",
    "study": "2.25.1",
    "share": "0123456789abcdef01234567",
    "extension": "csv",
    "version": "1",
    "image": "0123456789ab",
    "page": "1",
    "page_format": "png",
    "retrieval": "1",
}


@dataclass(frozen=True)
class Route:
    view_name: str
    url: str


def _sample(regex: str) -> str:
    def group(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in SAMPLES:
            raise AssertionError(f"no sample value for route parameter {name!r}; add one to SAMPLES")
        return SAMPLES[name]

    text = regex.lstrip("^").rstrip("$").replace("\\Z", "")
    text = re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)", group, text)
    return text.replace("\\", "")


def _patterns(resolver: URLResolver, prefix: str = "") -> Iterator[str]:
    for pattern in resolver.url_patterns:
        regex = pattern.pattern.regex.pattern
        if isinstance(pattern, URLResolver):
            yield from _patterns(pattern, prefix + _sample(regex))
        elif isinstance(pattern, URLPattern):
            yield prefix + _sample(regex)


def http_routes() -> list[Route]:
    routes = {}
    for path in _patterns(get_resolver()):
        url = "/" + path
        match = resolve(url)
        routes.setdefault(match.view_name, Route(match.view_name, url))
    return sorted(routes.values(), key=lambda route: route.view_name)


def websocket_routes() -> list[str]:
    from rendering.routing import websocket_urlpatterns

    return sorted(str(pattern.pattern) for pattern in websocket_urlpatterns)
