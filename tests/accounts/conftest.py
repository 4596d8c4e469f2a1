"""Fixtures for the accounts and security suites: a controllable clock, people, sign-in steps."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse

from accounts import clock as clock_module
from accounts.models import TOTPDevice, User
from accounts.services import totp_device_create

PASSWORD = "plum orchard at dusk"


class Clock:
    def __init__(self) -> None:
        # 15 s into a 30 s TOTP step, so +-1 step is unambiguous.
        self.now = dt.datetime(2026, 1, 5, 8, 0, 15, tzinfo=dt.UTC)

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def timestamp(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(clock_module, "source", lambda: fake.now)
    return fake


@pytest.fixture
def person(db):
    def make(username: str = "dr.who", role: str = "doctor", *, device: bool = True) -> User:
        user = User.objects.create_user(username=username, password=PASSWORD, role=role)
        if device:
            totp_device_create(user=user, confirmed=True)
        return user

    return make


def code_now(user: User, clock: Clock, steps: int = 0) -> str:
    device = TOTPDevice.objects.get(user=user)
    return device.token_at(clock.timestamp() + steps * 30)


def password_step(client, username: str, password: str = PASSWORD, **extra):
    return client.post(reverse("accounts:login"), {"username": username, "password": password, **extra})


def otp_step(client, token: str):
    return client.post(reverse("accounts:otp"), {"otp_token": token})


def sign_in(client, user: User, clock: Clock):
    assert password_step(client, user.username).status_code == 302
    response = otp_step(client, code_now(user, clock))
    assert response.status_code == 302, response.content
    return response
