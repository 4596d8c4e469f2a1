"""The Django admin, behind both factors and the policy: users, roles, devices, unlocks.

``GatewayAdminSite`` extends django-otp's ``OTPAdminSite``: a session that
has not passed the second factor is never an admin session. Its own login
page is replaced by the gateway's sign-in flow. Every model admin asks
``gateway.policy.may`` (not Django's ``is_staff``/``is_superuser``), and every
change is written to the audit log. Actions that act through a service (which
audits) also leave Django's ``LogEntry``, which the admin's "Recent actions"
box reads; an action that cannot be undone asks for confirmation first.
The devices section lives in ``imaging.admin``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django_otp.admin import OTPAdminSite

from accounts import services
from accounts.models import LoginThrottle, Role, TOTPDevice, User
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address
from gateway.policy import Permission, may


class GatewayAdminSite(OTPAdminSite):
    site_header = gettext_lazy("Fusion Gateway administration")
    site_title = gettext_lazy("Fusion Gateway administration")
    index_title = gettext_lazy("Users, roles, devices and unlocks")

    def has_permission(self, request: HttpRequest) -> bool:
        user: Any = request.user
        return bool(user.is_active and user.is_verified()
                    and (may(user, Permission.USER_MANAGE) or may(user, Permission.DEVICE_MANAGE)))

    def login(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        target = request.GET.get("next") or reverse("admin:index", current_app=self.name)
        if self.has_permission(request):
            return HttpResponseRedirect(reverse("admin:index", current_app=self.name))
        return HttpResponseRedirect(f"{reverse('accounts:login')}?{urlencode({'next': target})}")

    def password_change(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The gateway's own page, which asks the current password again, throttles and audits."""
        return HttpResponseRedirect(reverse("accounts:password_change"))

    def password_change_done(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        return HttpResponseRedirect(reverse("accounts:security"))

    # Sections named for what an IT admin looks for, not for the app that holds the model.
    SECTION_NAMES = {"imaging": gettext_lazy("Devices")}

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[Any]:
        app_list = super().get_app_list(request, app_label)
        for app in app_list:
            app["name"] = self.SECTION_NAMES.get(app["app_label"], app["name"])
        return sorted(app_list, key=lambda app: str(app["name"]).lower())


site = GatewayAdminSite(name="admin")


def _actor(request: HttpRequest) -> User:
    return cast(User, request.user)


def confirmed(request: HttpRequest) -> bool:
    """Whether an action's POST is the one from its confirmation page."""
    return request.POST.get("confirm") == "yes"


def confirmation_page(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any], *,
                      action: str, title: str, question: str, confirm_label: str,
                      consequence: str = "") -> TemplateResponse:
    """Django's admin-action pattern: list what ``action`` would act on; only a confirmed POST acts."""
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title, "question": question, "consequence": consequence,
        "confirm_label": confirm_label, "action": action, "queryset": queryset,
        "opts": model_admin.model._meta, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": model_admin.media,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "admin/action_confirmation.html", context)


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

    def log_recent(self, request: HttpRequest, objects: Iterable[Model], message: str) -> None:
        """Show what an action did in the admin's "Recent actions" (Django's ``LogEntry``).

        Only the ``LogEntry``: the service the action called has written the
        audit event already, so the audited ``log_change`` overrides are not
        called here.
        """
        objects = list(objects)
        if objects:
            LogEntry.objects.log_actions(user_id=_actor(request).pk, queryset=objects, action_flag=CHANGE,
                                         change_message=message)


@admin.register(User, site=site)
class UserAdmin(PolicyAdmin, DjangoUserAdmin):
    list_display = ("username", "role", "first_name", "last_name", "is_active", "last_login")
    list_filter = ("role", "is_active")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        (gettext_lazy("Person"), {"fields": ("first_name", "last_name", "email")}),
        (gettext_lazy("Access"), {"fields": ("role", "is_active", "user_permissions")}),
        (gettext_lazy("Dates"), {"fields": ("last_login", "date_joined")}),
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

    @admin.action(
        description=gettext_lazy("Unlock sign-in (clear failures and lockout, also of their addresses)"))
    def unlock_sign_in(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        users = list(queryset)
        for user in users:
            services.throttle_unlock(scope=LoginThrottle.Scope.ACCOUNT,
                                     key=services.account_key(user.username),
                                     actor=_actor(request), source_ip=client_address(request))
        self.log_recent(request, users, "Unlocked sign-in.")
        messages.success(request, ngettext("Unlocked %(count)d account.", "Unlocked %(count)d accounts.",
                                           len(users)) % {"count": len(users)})

    @admin.action(description=gettext_lazy("Sign out everywhere"))
    def sign_out_everywhere(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        users = list(queryset)
        for user in users:
            services.user_logout_everywhere(user=user, actor=_actor(request),
                                            source_ip=client_address(request))
        self.log_recent(request, users, "Signed out everywhere.")
        messages.success(request, ngettext("Ended every session of %(count)d account.",
                                           "Ended every session of %(count)d accounts.",
                                           len(users)) % {"count": len(users)})

    @admin.action(description=gettext_lazy("Reset second factor (lost phone): re-enrol at next sign-in"))
    def reset_second_factor(self, request: HttpRequest, queryset: QuerySet[User]) -> TemplateResponse | None:
        if not confirmed(request):
            return confirmation_page(
                self, request, queryset, action="reset_second_factor", title=_("Reset second factor"),
                question=ngettext("Reset the second factor of this account?",
                                  "Reset the second factors of these %(count)d accounts?",
                                  queryset.count()) % {"count": queryset.count()},
                consequence=_("Their authenticator and backup codes are removed and every session of "
                              "theirs ends; they set up a new authenticator at their next sign-in, "
                              "after their password."),
                confirm_label=_("Yes, reset"))
        users = list(queryset)
        for user in users:
            services.second_factor_reset(user=user, actor=_actor(request), source_ip=client_address(request))
        self.log_recent(request, users, "Reset the second factor.")
        messages.success(request, ngettext("Reset the second factor of %(count)d account.",
                                           "Reset the second factors of %(count)d accounts.",
                                           len(users)) % {"count": len(users)})
        return None


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
    fields = (*list_display, "sources")
    readonly_fields = fields
    actions = ("unlock",)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(
        description=gettext_lazy("Unlock (an account name: also the addresses its failures came from)"))
    def unlock(self, request: HttpRequest, queryset: QuerySet[LoginThrottle]) -> None:
        rows = list(queryset)
        for row in rows:
            services.throttle_unlock(scope=row.scope, key=row.key, actor=_actor(request),
                                     source_ip=client_address(request))
        self.log_recent(request, rows, "Unlocked.")
        messages.success(request, ngettext("Unlocked %(count)d entry.", "Unlocked %(count)d entries.",
                                           len(rows)) % {"count": len(rows)})


# The devices section registers itself on ``site``; it needs ``site`` and ``PolicyAdmin`` above.
from imaging import admin as _imaging_admin  # noqa: E402, F401
