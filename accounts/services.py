"""Writes to accounts: each state change is one function."""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from accounts.models import Role, User


@transaction.atomic
def user_create(*, username: str, password: str, role: Role, first_name: str = "",
                last_name: str = "") -> User:
    """Create an account after the password passes every password rule."""
    user = User(username=username, role=role, first_name=first_name, last_name=last_name)
    validate_password(password, user)
    user.set_password(password)
    user.full_clean()
    user.save()
    return user
