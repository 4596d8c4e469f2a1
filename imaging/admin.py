"""The admin's devices section: device accounts' endpoints (AE title, STOW-RS token), disable, rotate.

Registered on the gateway's admin site (``accounts.admin.site``), which only
IT admins reach; every page here asks ``gateway.policy.may`` for
``device.manage`` again. Endpoints are registered by ``manage.py
device_register`` (the token is printed once), so this section has no add
page; nor a delete page, because a disabled endpoint keeps its AE title for
the audit trail of what it sent. Every change goes through
``imaging.devices``, which audits it as ``admin.device``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from accounts.admin import PolicyAdmin, confirmation_page, confirmed, site
from gateway.net import client_address
from gateway.policy import Permission
from imaging import devices
from imaging.models import DeviceEndpoint


@admin.register(DeviceEndpoint, site=site)
class DeviceEndpointAdmin(PolicyAdmin):
    permission = Permission.DEVICE_MANAGE
    list_display = ("ae_title", "device_account", "active", "account_active", "has_token", "created_at")
    list_filter = ("active", "user__is_active")
    list_select_related = ("user",)
    search_fields = ("ae_title", "user__username")
    ordering = ("ae_title",)
    fields = ("ae_title", "device_account", "active", "account_active", "has_token", "created_at")
    readonly_fields = fields
    actions = ("disable", "rotate_token")

    @admin.display(description=gettext_lazy("device account"), ordering="user__username")
    def device_account(self, endpoint: DeviceEndpoint) -> str:
        return endpoint.user.username

    @admin.display(description=gettext_lazy("account active"), boolean=True, ordering="user__is_active")
    def account_active(self, endpoint: DeviceEndpoint) -> bool:
        return endpoint.user.is_active

    @admin.display(description=gettext_lazy("STOW-RS token"), boolean=True)
    def has_token(self, endpoint: DeviceEndpoint) -> bool:
        return bool(endpoint.token_hash)

    def get_urls(self) -> list[URLPattern]:
        opts = self.model._meta
        absent = {f"{opts.app_label}_{opts.model_name}_{page}" for page in ("add", "delete")}
        return [url for url in super().get_urls() if getattr(url, "name", None) not in absent]

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # Nothing is edited here: disabling and rotating are the list's actions.
        extra_context = {**(extra_context or {}), "show_save": False, "show_save_and_continue": False}
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: DeviceEndpoint, form: Any, change: bool) -> None:
        """Every field is read-only: nothing to save."""

    @admin.action(description=gettext_lazy("Disable (refused at C-STORE and STOW-RS from now on)"))
    def disable(self, request: HttpRequest, queryset: QuerySet[DeviceEndpoint]) -> None:
        endpoints = list(queryset.select_related("user"))
        disabled = [endpoint for endpoint in endpoints
                    if devices.device_endpoint_disable(endpoint=endpoint, actor=request.user,
                                                       source_ip=client_address(request))]
        self.log_recent(request, disabled, "Disabled.")
        messages.success(request, ngettext("Disabled %(count)d device endpoint.",
                                           "Disabled %(count)d device endpoints.",
                                           len(disabled)) % {"count": len(disabled)})
        if len(disabled) < len(endpoints):
            skipped = len(endpoints) - len(disabled)
            messages.info(request, ngettext("%(count)d was disabled already.",
                                            "%(count)d were disabled already.", skipped) % {"count": skipped})

    @admin.action(description=gettext_lazy("Rotate the STOW-RS token (the new one is shown once)"))
    def rotate_token(self, request: HttpRequest, queryset: QuerySet[DeviceEndpoint]) -> TemplateResponse:
        count = queryset.count()
        if not confirmed(request):
            return confirmation_page(
                self, request, queryset, action="rotate_token", title=_("Rotate STOW-RS token"),
                question=ngettext("Give this device endpoint a new STOW-RS token?",
                                  "Give these %(count)d device endpoints new STOW-RS tokens?",
                                  count) % {"count": count},
                consequence=_("The current token is refused from the moment you confirm: the device "
                              "cannot send over STOW-RS until it is configured with the new one, which "
                              "is shown once, on the next page. C-STORE by AE title is not affected."),
                confirm_label=_("Yes, rotate"))
        endpoints = list(queryset.select_related("user"))
        rotated = [(endpoint, devices.device_endpoint_token_rotate(endpoint=endpoint, actor=request.user,
                                                                   source_ip=client_address(request)))
                   for endpoint in endpoints]
        self.log_recent(request, endpoints, "Rotated the STOW-RS token.")
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/imaging/deviceendpoint/tokens_rotated.html", {
            **self.admin_site.each_context(request),
            "title": ngettext("New STOW-RS token", "New STOW-RS tokens", len(rotated)),
            "opts": self.model._meta, "rotated": rotated,
        })
