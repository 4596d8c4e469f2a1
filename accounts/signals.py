"""Receivers that announce a possibly ended session to open websockets (``accounts.broadcast``)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save

from accounts.broadcast import sessions_changed
from accounts.models import BackupCodeDevice, TOTPDevice, User


def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    key = getattr(getattr(request, "session", None), "session_key", None)
    sessions_changed(user_id=getattr(user, "pk", None), session_key=key)


def _account_saved(sender: Any, instance: User, created: bool,
                   update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    # A sign-in elsewhere only stamps last_login: nothing an open socket depends on.
    if not created and update_fields != frozenset({"last_login"}):
        sessions_changed(user_id=instance.pk)


def _device_removed(sender: Any, instance: TOTPDevice | BackupCodeDevice, **kwargs: Any) -> None:
    sessions_changed(user_id=getattr(instance, "user_id", None))


def connect() -> None:
    user_logged_out.connect(_logged_out, dispatch_uid="accounts.websocket-logout")
    post_save.connect(_account_saved, sender=User, dispatch_uid="accounts.websocket-account")
    for model in (TOTPDevice, BackupCodeDevice):
        post_delete.connect(_device_removed, sender=model,
                            dispatch_uid=f"accounts.websocket-{model.__name__}")
