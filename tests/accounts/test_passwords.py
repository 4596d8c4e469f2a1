"""NIST SP 800-63B passwords: length not composition, no truncation, no context words."""

import pytest
from django.contrib.auth.hashers import check_password, make_password
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError

from accounts.models import User
from accounts.validators import MaximumLengthValidator
from tests.conftest import manage


def _user(**fields):
    return User(username=fields.pop("username", "dr.ada"), role="doctor", **fields)


@pytest.mark.parametrize("password", [
    "plum orchard at dusk",          # a passphrase, no digits or symbols: fine
    "a" + "bcdefghijkl",             # 12 lowercase letters, no composition rule
    "zq" * 64,                       # 128 characters
    "long passphrase " * 16,         # 256 characters
])
def test_length_without_composition_rules(password):
    validate_password(password, _user())


@pytest.mark.parametrize("password", [
    "elevenchars",                   # 11 characters
    "x" * 257,                       # over the maximum
    "password1234",                  # common
    "FusionGateway2026!",            # product name
    "Fus10n-G4tew4y-2026",           # product name, letter-for-digit swaps
    "DrAda-DrAda-2026!!",            # user name
    "Lovelace-Lovelace-1815",        # the person's own name
])
def test_short_long_common_and_context_passwords_are_refused(password):
    with pytest.raises(ValidationError):
        validate_password(password, _user(last_name="Lovelace"))


def test_the_maximum_may_not_be_set_below_128():
    with pytest.raises(ValueError):
        MaximumLengthValidator(max_length=64)


def test_argon2id_hashes_every_character(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher"]
    password = "w" * 199 + "!"
    encoded = make_password(password)
    assert encoded.startswith("argon2$argon2id$")
    assert check_password(password, encoded)
    assert not check_password(password[:-1] + "?", encoded)
    assert not check_password(password[:128], encoded)


def test_argon2id_is_first_outside_the_test_settings(tmp_path):
    result = manage("shell", "--no-imports", "-c",
                    "from django.conf import settings; print(settings.PASSWORD_HASHERS[0])",
                    env={"GATEWAY_VAR_DIR": str(tmp_path)})
    assert result.stdout.strip() == "django.contrib.auth.hashers.Argon2PasswordHasher", result.stderr
