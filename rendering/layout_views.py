"""The "Layouts and rules" pages: hanging rules and grid layouts shown and edited as their JSON.

A reader (``study.view``) edits their own on ``layouts`` and sees the hospital's read-only; IT
(``layout.manage``) edits the hospital's on ``layouts_hospital``. Both pages are one form per
item, posted back to the page (POST, redirect, GET). What is typed is checked by the same strict
parsers the viewer uses (``rendering.hanging.hanging_parse``, ``rendering.grids.grid_parse``);
a refusal shows the parser's words next to the field and keeps what was typed. The access
decision is the route's rule (``gateway.policy.ROUTES``); the services below keep each owner's
items apart, so an id of someone else's (or of the hospital's, on a reader's page) is "not found".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods

from accounts import grids as grid_store
from accounts import hanging as rule_store
from accounts.models import User
from rendering.grids import GridError, grid_parse
from rendering.hanging import RULES_PER_USER, HangingRuleError, hanging_name_clean
from rendering.said import said

KINDS = ("rule", "grid")
OPS = ("add", "save", "delete")


class ItemForm(forms.Form):
    """One rule's or grid's name and JSON form, as typed; the services decide what may be kept."""

    name = forms.CharField(label=gettext_lazy("Name"), max_length=64, strip=False,
                           widget=forms.TextInput(attrs={"autocomplete": "off"}))
    text = forms.CharField(label=gettext_lazy("JSON form"), max_length=16384, strip=False,
                           widget=forms.Textarea(attrs={"rows": 8, "cols": 80, "spellcheck": "false",
                                                        "translate": "no", "class": "layout-json"}))


@dataclass
class Item:
    kind: str
    id: int | None
    name: str
    form: ItemForm


@dataclass(frozen=True)
class Store:
    """One owner's rules and grids: ``user``'s own, or (``hospital``) the hospital's, changed by ``user``."""

    user: User
    hospital: bool

    def rules(self) -> list[tuple[int, str, dict[str, Any]]]:
        listed = rule_store.hanging_hospital_rules() if self.hospital else rule_store.hanging_rules_of(
            user=self.user)
        return [(saved.id, saved.name, saved.hanging.wire()) for saved in listed]

    def grids(self) -> list[tuple[int, str, dict[str, Any]]]:
        listed = grid_store.grids_hospital() if self.hospital else [
            grid for grid in grid_store.grids_of(user=self.user) if not grid["hospital"]]
        return [(grid["id"], grid["name"], grid["grid"]) for grid in listed]

    def write(self, kind: str, op: str, item: int | None, name: str, data: Any) -> None:
        """Add, save or delete one item; raises the parser's error, or a ``*NotFound``."""
        if kind == "rule":
            self._rule(op, item, name, data)
        else:
            self._grid(op, item, name, data)

    def _rule(self, op: str, item: int | None, name: str, data: Any) -> None:
        user = self.user
        if self.hospital:
            if op == "add":
                rule_store.hanging_hospital_save(actor=user, name=name, rule=data)
            elif op == "save":
                rule_store.hanging_hospital_update(actor=user, rule_id=cast(int, item), name=name, rule=data)
            else:
                rule_store.hanging_hospital_delete(actor=user, rule_id=cast(int, item))
        elif op == "add":
            rule_store.hanging_rule_save(user=user, name=name, rule=data)
        elif op == "save":
            rule_store.hanging_rule_update(user=user, rule_id=cast(int, item), name=name, rule=data)
        else:
            rule_store.hanging_rule_delete(user=user, rule_id=cast(int, item))

    def _grid(self, op: str, item: int | None, name: str, data: Any) -> None:
        user = self.user
        if op == "delete":
            if self.hospital:
                grid_store.grid_hospital_delete(actor=user, grid_id=cast(int, item))
            else:
                grid_store.grid_delete(user=user, grid_id=cast(int, item))
            return
        grid = grid_parse(data)
        if self.hospital:
            if op == "add":
                grid_store.grid_hospital_save(actor=user, name=name, grid=grid)
            else:
                grid_store.grid_hospital_update(actor=user, grid_id=cast(int, item), name=name, grid=grid)
        elif op == "add":
            grid_store.grid_save(user=user, name=name, grid=grid)
        else:
            grid_store.grid_update(user=user, grid_id=cast(int, item), name=name, grid=grid)


def _shown(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def _form(kind: str, item: int | None, name: str = "", data: Any = None, *,
          bound: dict[str, Any] | None = None) -> ItemForm:
    prefix = f"{kind}-{item if item is not None else 'new'}-%s"
    if bound is not None:
        return ItemForm(bound, auto_id=prefix)
    return ItemForm(initial={"name": name, "text": _shown(data) if data is not None else ""}, auto_id=prefix)


def _items(kind: str, listed: list[tuple[int, str, dict[str, Any]]]) -> list[Item]:
    return [Item(kind, item, name, _form(kind, item, name, data)) for item, name, data in listed]


def _name_checked(kind: str, form: ItemForm) -> bool:
    try:
        (hanging_name_clean if kind == "rule" else grid_store.grid_name_clean)(
            name=form.cleaned_data["name"])
    except (HangingRuleError, GridError) as error:
        form.add_error("name", said(error))
        return False
    return True


def _posted(request: HttpRequest, store: Store) -> tuple[str, int | None, ItemForm] | None:
    """Apply a post; None when it was kept (redirect), else the refused item and its bound form."""
    kind, op = request.POST.get("kind", ""), request.POST.get("op", "")
    raw_item = request.POST.get("item", "")
    if kind not in KINDS or op not in OPS or (op != "add") != raw_item.isdigit() or len(raw_item) > 12:
        raise Http404("No such item.")
    item = int(raw_item) if raw_item else None
    not_found: tuple[type[Exception], ...] = (rule_store.HangingRuleNotFound, grid_store.GridLayoutNotFound)
    if op == "delete":
        try:
            store.write(kind, op, item, "", None)
        except not_found:
            raise Http404("No such item.") from None
        return None
    form = _form(kind, item, bound=request.POST)
    if not form.is_valid() or not _name_checked(kind, form):
        return kind, item, form
    try:
        data = json.loads(form.cleaned_data["text"])
    except RecursionError:
        form.add_error("text", _("This is not JSON: %(why)s") % {"why": _("nested too deeply")})
        return kind, item, form
    except ValueError as error:
        form.add_error("text", _("This is not JSON: %(why)s") % {"why": str(error)})
        return kind, item, form
    try:
        store.write(kind, op, item, form.cleaned_data["name"], data)
    except not_found:
        raise Http404("No such item.") from None
    except (HangingRuleError, GridError) as error:
        form.add_error("text", said(error))
        return kind, item, form
    return None


def _page(request: HttpRequest, store: Store, route: str) -> HttpResponse:
    refused = _posted(request, store) if request.method == "POST" else None
    if request.method == "POST" and refused is None:
        messages.success(request, _("Deleted.") if request.POST.get("op") == "delete" else _("Saved."))
        return HttpResponseRedirect(reverse(route))
    sections: dict[str, list[Item]] = {"rule": _items("rule", store.rules()),
                                       "grid": _items("grid", store.grids())}
    new = {kind: _form(kind, None) for kind in KINDS}
    if refused is not None:
        kind, item, form = refused
        if item is None:
            new[kind] = form
        else:
            for shown in sections[kind]:
                if shown.id == item:
                    shown.form = form
    context: dict[str, Any] = {
        "hospital_page": store.hospital, "rules": sections["rule"], "grids": sections["grid"],
        "new_rule": new["rule"], "new_grid": new["grid"], "refused": refused is not None,
        "limits": {"rules": rule_store.HOSPITAL_RULES if store.hospital else RULES_PER_USER,
                   "grids": grid_store.HOSPITAL_GRIDS if store.hospital else grid_store.GRIDS_PER_USER},
    }
    if not store.hospital:
        context["hospital_rules"] = [(saved.name, _shown(saved.hanging.wire()))
                                     for saved in rule_store.hanging_hospital_rules()]
        context["hospital_grids"] = [(grid["name"], _shown(grid["grid"]))
                                     for grid in grid_store.grids_hospital()]
    return render(request, "rendering/layouts.html", context, status=200)


def _view(hospital: bool, route: str) -> Callable[[HttpRequest], HttpResponse]:
    @require_http_methods(["GET", "POST"])
    def view(request: HttpRequest) -> HttpResponse:
        return _page(request, Store(cast(User, request.user), hospital), route)

    return view


layouts = _view(False, "rendering:layouts")
layouts.__doc__ = "The reader's own hanging rules and grids, editable as JSON; the hospital's read-only."
layouts_hospital = _view(True, "rendering:layouts_hospital")
layouts_hospital.__doc__ = "IT: the hospital-wide hanging rules and grids, editable as JSON (audited)."
