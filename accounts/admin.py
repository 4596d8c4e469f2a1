"""The Django admin, behind both factors and the policy: users, roles, devices, unlocks.

``GatewayAdminSite`` extends django-otp's ``OTPAdminSite``: a session that
has not passed the second factor is never an admin session. Its own login
page is replaced by the gateway's sign-in flow. Every model admin asks
``gateway.policy.may`` (not Django's ``is_staff``/``is_superuser``), and every
change is written to the audit log.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django_otp.admin import OTPAdminSite

from accounts import services
from accounts.models import LoginThrottle, Role, TOTPDevice, User
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address
from gateway.policy import Permission, may


class GatewayAdminSite(OTPAdminSite):
    site_header = "Fusion Gateway administration"
    site_title = "Fusion Gateway administration"
    index_title = "Users, roles, devices and unlocks"

    def has_permission(self, request: HttpRequest) -> bool:
        user: Any = request.user
        return bool(user.is_active and user.is_verified()
                    and (may(user, Permission.USER_MANAGE) or may(user, Permission.DEVICE_MANAGE)))

    def login(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        target = request.GET.get("next") or reverse("admin:index", current_app=self.name)
        if self.has_permission(request):
            return HttpResponseRedirect(reverse("admin:index", current_app=self.name))
        return HttpResponseRedirect(f"{reverse('accounts:login')}?{urlencode({'next': target})}")


site = GatewayAdminSite(name="admin")


def _actor(request: HttpRequest) -> User:
    return cast(User, request.user)


class PolicyAdmin(admin.ModelAdmin):
    """Every admin permission is the policy's answer for ``permission``."""

    permission = Permission.USER_MANAGE

    def _may(self, request: HttpRequest) -> bool:
        return may(request.user, self.permission)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._may(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return self._may(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may(request)


@admin.register(User, site=site)
class UserAdmin(PolicyAdmin, DjangoUserAdmin):
    list_display = ("username", "role", "first_name", "last_name", "is_active", "last_login")
    list_filter = ("role", "is_active")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Person", {"fields": ("first_name", "last_name", "email")}),
        ("Access", {"fields": ("role", "is_active", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",),
                "fields": ("username", "role", "usable_password", "password1", "password2")}),
    )
    readonly_fields = ("last_login", "date_joined")
    filter_horizontal = ("user_permissions",)
    actions = ("unlock_sign_in", "sign_out_everywhere", "reset_second_factor")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.role == Role.DEVICE:
            return may(request.user, Permission.DEVICE_MANAGE)
        return super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        previous_role = (User.objects.filter(pk=obj.pk).values_list("role", flat=True).first()
                         if change else None)
        super().save_model(request, obj, form, change)
        if change and previous_role != obj.role:
            audit_record(actor=_actor(request), action=Action.ADMIN_ROLE, outcome=Outcome.SUCCESS,
                         source_ip=client_address(request), acting_for=obj.username,
                         details={"user": obj.username, "from": previous_role, "to": obj.role})
            services.user_logout_everywhere(user=obj, actor=_actor(request),
                                            source_ip=client_address(request))

    def _audit(self, request: HttpRequest, obj: Any, change: str, message: Any) -> None:
        action = Action.ADMIN_DEVICE if getattr(obj, "role", None) == Role.DEVICE else Action.ADMIN_USER
        audit_record(actor=_actor(request), action=action, outcome=Outcome.SUCCESS,
                     source_ip=client_address(request),
                     details={"change": change, "user": str(getattr(obj, "username", obj)),
                              "message": str(message)[:500]})

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._audit(request, obj, "created", message)
        return super().log_addition(request, obj, message)

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        self._audit(request, obj, "changed", message)
        return super().log_change(request, obj, message)

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        for obj in queryset:
            self._audit(request, obj, "deleted", "")
        return super().log_deletions(request, queryset)

    @admin.action(description="Unlock sign-in (clear failures and lockout)")
    def unlock_sign_in(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            services.throttle_unlock(scope=LoginThrottle.Scope.ACCOUNT,
                                     key=services.account_key(user.username),
                                     actor=_actor(request), source_ip=client_address(request))
        messages.success(request, f"Unlocked {queryset.count()} account(s).")

    @admin.action(description="Sign out everywhere")
    def sign_out_everywhere(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            services.user_logout_everywhere(user=user, actor=_actor(request),
                                            source_ip=client_address(request))
        messages.success(request, f"Ended every session of {queryset.count()} account(s).")

    @admin.action(description="Reset second factor (lost phone): re-enrol at next sign-in")
    def reset_second_factor(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            services.second_factor_reset(user=user, actor=_actor(request), source_ip=client_address(request))
        messages.success(request, f"Reset the second factor of {queryset.count()} account(s).")


@admin.register(TOTPDevice, site=site)
class TOTPDeviceAdmin(PolicyAdmin):
    """Read-only list; the secret is never shown. Deleting one is a second-factor reset."""

    list_display = ("user", "name", "confirmed", "created_at")
    list_filter = ("confirmed",)
    fields = ("user", "name", "confirmed", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: TOTPDevice) -> None:
        services.second_factor_reset(user=obj.user, actor=_actor(request), source_ip=client_address(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[TOTPDevice]) -> None:
        for device in list(queryset):
            self.delete_model(request, device)


@admin.register(LoginThrottle, site=site)
class LoginThrottleAdmin(PolicyAdmin):
    """Failures and lockouts per account name and source address; unlock here."""

    list_display = ("scope", "key", "failures", "last_failure_at", "locked_at")
    list_filter = ("scope", ("locked_at", admin.EmptyFieldListFilter))
    search_fields = ("key",)
    fields = list_display
    readonly_fields = list_display
    actions = ("unlock",)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Unlock")
    def unlock(self, request: HttpRequest, queryset: QuerySet[LoginThrottle]) -> None:
        for row in queryset:
            services.throttle_unlock(scope=row.scope, key=row.key, actor=_actor(request),
                                     source_ip=client_address(request))
        messages.success(request, f"Unlocked {queryset.count()} entr(y/ies).")
