"""The websocket Origin rule: this gateway's own scheme, host and port, or a trusted origin."""

import pytest

from gateway.origin import origin_allowed


def _scope(origin: str | None, host: str = "gw.example:8443", scheme: str = "ws",
           proto: str | None = None) -> dict:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if proto is not None:
        headers.append((b"x-forwarded-proto", proto.encode()))
    return {"type": "websocket", "scheme": scheme, "headers": headers}


@pytest.fixture
def gateway_settings(settings):
    settings.ALLOWED_HOSTS = ["gw.example"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://viewer.example"]
    settings.SECURE_PROXY_SSL_HEADER = None
    return settings


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://gw.example:8443", True), ("HTTP://GW.EXAMPLE:8443", True),
    ("http://gw.example:8444", False), ("https://gw.example:8443", False),
    ("http://gw.example", False), ("http://other.example:8443", False),
    ("https://viewer.example", True), ("https://viewer.example:443", True),
    ("null", False), ("http://gw.example:8443/path", False), (None, False),
])
def test_scheme_host_and_port_must_all_match(gateway_settings, origin, allowed):
    assert origin_allowed(_scope(origin)) is allowed


def test_a_host_outside_allowed_hosts_is_refused_even_when_the_origin_matches_it(gateway_settings):
    assert not origin_allowed(_scope("http://evil.example:8443", host="evil.example:8443"))


def test_behind_the_proxy_its_configured_header_gives_the_scheme(gateway_settings):
    gateway_settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert origin_allowed(_scope("https://gw.example:8443", proto="https"))
    assert not origin_allowed(_scope("http://gw.example:8443", proto="https"))
    assert origin_allowed(_scope("http://gw.example:8443", proto="http"))


def test_the_forwarded_header_is_ignored_unless_the_proxy_is_trusted(gateway_settings):
    assert not origin_allowed(_scope("https://gw.example:8443", proto="https"))
