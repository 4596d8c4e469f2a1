"""Health probe, default deny for anonymous requests, and security headers."""

import pytest
from django.db import DatabaseError
from django.urls import reverse

from accounts.models import User
from tests.conftest import ZONES
from tests.security.inventory import http_routes

pytestmark = pytest.mark.django_db(databases=ZONES)

# dicomweb:stow has no session: devices authenticate with a bearer token in the view (401 otherwise).
# The page scripts' translated strings and the language choice hold no data: every page needs them,
# the sign-in page first.
PUBLIC_ROUTES = {"healthz", "accounts:login", "dicomweb:stow", "sharing:open", "sharing:pin",
                 "i18n:catalogue", "i18n:language"}


def test_healthz_reports_every_zone_without_authentication(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "databases": {"default": "ok", "identity": "ok", "audit": "ok"},
    }


def test_healthz_reports_an_unreachable_zone(client, monkeypatch):
    from gateway import views

    real = views._database_reachable
    monkeypatch.setattr(views, "_database_reachable", lambda alias: alias != "audit" and real(alias))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["databases"]["audit"] == "unreachable"


def test_healthz_survives_a_database_error(client, monkeypatch):
    from django.db.backends.utils import CursorWrapper

    def fail(*args, **kwargs):
        raise DatabaseError("down")

    monkeypatch.setattr(CursorWrapper, "execute", fail)
    assert client.get("/healthz").status_code == 503


def test_healthz_accepts_only_get(client):
    assert client.post("/healthz").status_code == 405


@pytest.mark.parametrize("route", [r for r in http_routes() if r.view_name not in PUBLIC_ROUTES],
                         ids=lambda route: route.view_name)
def test_every_other_route_requires_sign_in(client, route):
    response = client.get(route.url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("accounts:login"))


def test_the_public_route_list_is_exactly_what_exists():
    assert {route.view_name for route in http_routes()} >= PUBLIC_ROUTES


def test_login_page_carries_the_security_headers(client):
    response = client.get(reverse("accounts:login"))
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    for directive in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'",
                      "base-uri 'none'", "form-action 'self'"):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "camera=()" in response.headers["Permissions-Policy"]


def test_signed_in_pages_are_never_cached(client):
    from django_otp import DEVICE_ID_SESSION_KEY

    from accounts.services import totp_device_create

    user = User.objects.create_user(username="reader", password="x" * 16, role="doctor")
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = totp_device_create(user=user, confirmed=True).persistent_id
    session.save()
    response = client.get(reverse("home"))
    assert response.status_code == 200
    cache_control = {part.strip() for part in response.headers["Cache-Control"].split(",")}
    assert {"no-store", "no-cache", "private", "max-age=0"} <= cache_control
    assert response.headers["Pragma"] == "no-cache"


def test_session_and_csrf_cookies_are_httponly_and_strict(client):
    User.objects.create_user(username="reader", password="correct horse battery", role="nurse")
    response = client.post(reverse("accounts:login"),
                           {"username": "reader", "password": "correct horse battery"})
    assert response.status_code == 302
    session = response.cookies["gateway-session"]
    assert session["httponly"] and session["samesite"] == "Strict"
    assert client.get(reverse("accounts:login")).status_code == 302


def test_login_failure_does_not_reveal_whether_the_account_exists(client):
    User.objects.create_user(username="known", password="correct horse battery", role="nurse")
    wrong_password = client.post(reverse("accounts:login"), {"username": "known", "password": "n" * 14})
    no_account = client.post(reverse("accounts:login"), {"username": "ghost", "password": "n" * 14})
    assert wrong_password.status_code == no_account.status_code == 200
    assert wrong_password.context["form"].errors == no_account.context["form"].errors
