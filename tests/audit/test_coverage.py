"""Every route, websocket route and management command is mapped to the audit events it
must emit, and each mapping is proved by exercising it.

A new route or command without an entry here fails ``test_every_route_is_mapped`` /
``test_every_command_is_mapped``: deciding what it must audit is part of adding it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command, get_commands
from django.urls import reverse

from gateway.audit.models import AuditEvent
from gateway.policy import ROUTES, WEBSOCKET_ROUTES
from tests.accounts.conftest import PASSWORD, clock, code_now, otp_step, password_step, person, sign_in
from tests.conftest import REPO, ZONES
from tests.security.inventory import http_routes
from tests.sharing import factories as sharing_factories

pytestmark = pytest.mark.django_db(databases=ZONES)
__all__ = ["clock", "person"]


@dataclass(frozen=True)
class Case:
    """Do ``act(client, people)``; the events appended meanwhile must be exactly ``emits``."""

    act: Callable
    emits: tuple[str, ...]


def _new_actions(before: int) -> list[str]:
    return list(AuditEvent.objects.filter(sequence__gt=before).order_by("sequence")
                .values_list("action", flat=True))


def _head() -> int:
    last = AuditEvent.objects.order_by("-sequence").first()
    return last.sequence if last else 0


def _post(name: str, data: dict | None = None):
    return lambda client, people: client.post(reverse(name), data or {})


def _get(name: str, query: dict | None = None):
    return lambda client, people: client.get(reverse(name), query or {})


LAYOUT_GRID_ADDED = {"kind": "grid", "op": "add", "name": "wide",
                     "text": '{"rows": 1, "columns": 2, "cells": [[0, 0, 1, 1], [0, 1, 1, 1]]}'}
ROUTE_CASES: dict[str, list[tuple[str, Case]]] = {
    "healthz": [("probe", Case(_get("healthz"), ()))],
    "i18n:catalogue": [("the page scripts' strings", Case(_get("i18n:catalogue"), ()))],
    "i18n:language": [("a language chosen", Case(_post("i18n:language", {"language": "hu"}), ()))],
    "imaging:raw_import": [("the form", Case(lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                                                          c.get(reverse("imaging:raw_import"))),
                                             ("auth.login",)))],
    "accounts:login": [
        ("wrong password", Case(lambda c, p: password_step(c, p["doctor"].username, "wrong " * 3),
                                ("auth.login-failed",))),
        ("unknown account", Case(lambda c, p: password_step(c, "nobody", "wrong " * 3),
                                 ("auth.login-failed",))),
        ("right password", Case(lambda c, p: password_step(c, p["doctor"].username), ())),
    ],
    "accounts:otp": [
        ("wrong code", Case(lambda c, p: (password_step(c, p["doctor"].username),
                                          otp_step(c, "000000")), ("auth.otp-failed",))),
        ("right code", Case(lambda c, p: (password_step(c, p["doctor"].username),
                                          otp_step(c, code_now(p["doctor"], p["clock"]))),
                            ("auth.login",))),
    ],
    "accounts:logout": [("sign out", Case(lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                                                       c.post(reverse("accounts:logout"))),
                                          ("auth.login", "auth.logout")))],
    "home": [("start page", Case(lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                                                c.get(reverse("home"))), ("auth.login",)))],
    "accounts:security": [("own security page", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]), c.get(reverse("accounts:security"))),
        ("auth.login",)))],
    "accounts:backup_codes": [("regenerate", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.post(reverse("accounts:backup_codes"))),
        ("auth.login", "admin.user")))],
    "accounts:password_change": [
        ("wrong current password", Case(
            lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                          c.post(reverse("accounts:password_change"),
                                 {"current_password": "not the password", "new_password": "x" * 20,
                                  "new_password_again": "x" * 20})),
            ("auth.login", "admin.user"))),
        ("changed", Case(
            lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                          c.post(reverse("accounts:password_change"),
                                 {"current_password": PASSWORD, "new_password": "quince lantern by the weir",
                                  "new_password_again": "quince lantern by the weir"})),
            ("auth.login", "admin.user"))),
    ],
    "accounts:logout_everywhere": [("everywhere", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.post(reverse("accounts:logout_everywhere"))),
        ("auth.login", "auth.logout")))],
    "accounts:enrol": [
        ("wrong code", Case(lambda c, p: (password_step(c, p["newcomer"].username),
                                          c.post(reverse("accounts:enrol"),
                                                 {"otp_token": "000000"})),
                            ("auth.otp-failed",))),
    ],
    "imaging:worklist": [("patient search", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.get(reverse("imaging:worklist"), {"name": "Doe"})),
        ("auth.login", "patient.search")))],
    "rendering:viewer": [("no such study", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.get(reverse("rendering:viewer", args=["1.2.3.4"]))),
        ("auth.login", "study.open")))],
    "rendering:findings": [("no such study", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.get(reverse("rendering:findings", args=["1.2.3.4", "csv"]))),
        ("auth.login", "export")))],
    **{name: [("no such study", Case(
        lambda c, p, name=name, method=method, kwargs=kwargs: (
            sign_in(c, p["doctor"], p["clock"]),
            getattr(c, method)(reverse(name, kwargs={"study": "1.2.3.4", **kwargs}))),
        ("auth.login", action)))]
       for name, method, kwargs, action in (
           ("rendering:report", "get", {}, "report.read"),
           ("rendering:report_image", "get", {"version": 1, "image": "0123456789ab"}, "report.read"),
           ("rendering:report_start", "post", {}, "report.create"),
           ("rendering:report_save", "post", {"version": 1}, "report.edit"),
           ("rendering:report_adjust", "post", {"version": 1, "image": "0123456789ab"}, "report.edit"),
           ("rendering:report_sign", "post", {"version": 1}, "report.sign"),
           ("rendering:report_send", "post", {"version": 1}, "report.send"),
           ("rendering:report_pdf", "get", {"version": 1}, "report.export"),
           ("rendering:report_page", "get", {"version": 1, "page": 1, "page_format": "png"}, "report.export"),
       )},
    "imaging:retrieve": [("an answer no longer known", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.post(reverse("imaging:retrieve"), {"remote": "999"})),
        ("auth.login", "pacs.retrieve")))],
    # A retrieval's progress and the queue hold counts and states, no patient data: nothing to audit.
    "imaging:retrieval": [("no such retrieval", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.get(reverse("imaging:retrieval", kwargs={"retrieval": 999}))),
        ("auth.login",)))],
    "imaging:retrieval_stop": [("no such retrieval", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.post(reverse("imaging:retrieval_stop", kwargs={"retrieval": 999}))),
        ("auth.login",)))],
    "imaging:pacs_queue": [("queue", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]), c.get(reverse("imaging:pacs_queue"))),
        ("auth.login",)))],
    "dicomweb:stow": [("no device token", Case(
        lambda c, p: c.post(reverse("dicomweb:stow"), b"--x--",
                            content_type="multipart/related; type=\"application/dicom\"; boundary=x"),
        ("ingest",)))],
    # A reader's own rules and grids hold no patient data: nothing to audit. The hospital's change every
    # reader's viewer: each change is audited, and so is a refusal.
    "rendering:layouts": [
        ("the page", Case(lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                                        c.get(reverse("rendering:layouts"))), ("auth.login",))),
        ("a grid added", Case(lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                                            c.post(reverse("rendering:layouts"), LAYOUT_GRID_ADDED)),
                              ("auth.login",))),
    ],
    "rendering:layouts_hospital": [
        ("refused to a doctor", Case(lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                                                   c.get(reverse("rendering:layouts_hospital"))),
                                     ("auth.login", "admin.layout"))),
        ("a hospital grid added", Case(lambda c, p: (sign_in(c, p["it"], p["clock"]),
                                                     c.post(reverse("rendering:layouts_hospital"),
                                                            LAYOUT_GRID_ADDED)),
                                       ("auth.login", "admin.layout"))),
    ],
    "audit:console": [("read", Case(lambda c, p: (sign_in(c, p["auditor"], p["clock"]),
                                                  c.get(reverse("audit:console"))),
                                    ("auth.login", "audit.read")))],
    "audit:export": [("export", Case(lambda c, p: (sign_in(c, p["auditor"], p["clock"]),
                                                   c.get(reverse("audit:export"),
                                                         {"format": "csv"})),
                                     ("auth.login", "audit.export")))],
    "audit:verify": [("verify", Case(lambda c, p: (sign_in(c, p["auditor"], p["clock"]),
                                                   c.post(reverse("audit:verify"))),
                                     ("auth.login", "audit.verify")))],
}


def _shared(people, *, redeemed: bool, client=None):
    """A share of a fresh study minted by the case doctor; redeemed in ``client`` when asked."""
    study = sharing_factories.clinical_study(uid="2.25.4242")
    minted = sharing_factories.mint(people["doctor"], study)
    if redeemed:
        assert sharing_factories.redeem(client, minted).status_code == 302
    return minted


def _forward(client, people):
    _shared(people, redeemed=True, client=client)
    return client.post(reverse("sharing:forward"), {"study": "", "actions": "view", "hours": 2,
                                                     "recipient": "Dr Colleague",
                                                     "idempotency_key": "f" * 32})


def _wrong_pin(client, people):
    minted = _shared(people, redeemed=False)
    client.post(reverse("sharing:open"), {"token": minted.token})
    return client.post(reverse("sharing:pin"), {"pin": "x"})


def _revoke(client, people):
    minted = _shared(people, redeemed=False)
    sign_in(client, people["doctor"], people["clock"])
    return client.post(reverse("sharing:revoke", args=[minted.share.public_id]))


SHARING_CASES: dict[str, list[tuple[str, Case]]] = {
    "sharing:mint": [("mint", Case(
        lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                      c.post(reverse("sharing:mint", args=[
                          sharing_factories.clinical_study(uid="2.25.4343").study_instance_uid]),
                          {"scope": "study", "actions": "view", "hours": 72,
                           "recipient": "Dr Case", "idempotency_key": "m" * 32})),
        ("auth.login", "share.mint")))],
    "sharing:active": [("list", Case(lambda c, p: (sign_in(c, p["doctor"], p["clock"]),
                                                   c.get(reverse("sharing:active"))),
                                     ("auth.login",)))],
    "sharing:revoke": [("revoke", Case(_revoke, ("auth.login", "share.mint", "share.revoke")))],
    "sharing:open": [("bad token", Case(
        lambda c, p: c.post(reverse("sharing:open"), {"token": "not-a-token"}), ("share.deny",)))],
    "sharing:pin": [
        ("wrong pin", Case(_wrong_pin, ("share.mint", "share.deny"))),
        ("right pin", Case(lambda c, p: _shared(p, redeemed=True, client=c),
                           ("share.mint", "share.redeem"))),
    ],
    "sharing:home": [("list", Case(lambda c, p: (_shared(p, redeemed=True, client=c),
                                                 c.get(reverse("sharing:home"))),
                                   ("share.mint", "share.redeem", "share.use")))],
    "sharing:forward": [("forward", Case(_forward, ("share.mint", "share.redeem", "share.mint")))],
    "sharing:leave": [("leave", Case(lambda c, p: (_shared(p, redeemed=True, client=c),
                                                   c.post(reverse("sharing:leave"))),
                                     ("share.mint", "share.redeem")))],
}
ROUTE_CASES.update(SHARING_CASES)
COMMAND_CASES: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "audit_verify": (lambda: call_command("audit_verify"), ("audit.verify",)),
    "keys_rotate": (lambda: call_command("keys_rotate", purpose="share"), ("admin.key",)),
    "audit_checkpoint": (lambda: call_command("audit_checkpoint"), ()),
    "create_user": (lambda: call_command("create_user", username="new.nurse", role="nurse"),
                    ("admin.user",)),
    "seed_demo": (lambda: call_command("seed_demo", phantom_slices=32),
                  ("admin.user",) * 3 + ("admin.device",) + ("admin.user",) * 2
                  + ("admin.device", "ingest")),
    "device_register": (lambda: (call_command("create_user", username="ct.scanner", role="device",
                                              password="a long device secret 1"),
                                 call_command("device_register", "ct.scanner", ae_title="CT9")),
                        ("admin.device", "admin.device")),
    "import_dicom": (lambda: call_command("import_dicom", str(_one_instance()), no_progress=True),
                     ("ingest",)),
    "model_register": (lambda: call_command("model_register", *_one_model()), ("admin.model",)),
    "dicom_destination": (lambda: call_command("dicom_destination", "add", "RIS", "RIS", "10.0.0.9", "104"),
                          ("admin.destination",)),
    "import_raw": (lambda: call_command("import_raw", str(_one_raw_volume()), patient_id="RAW-1",
                                        patient_name="Raw^Volume", modality="CT"), ("ingest",)),
    "report_letterhead": (lambda: call_command("report_letterhead", "--hospital", "General"),
                          ("admin.letterhead",)),
}
# Long-running servers: proved by their own tests against real peers.
PROVED_ELSEWHERE = {
    "run_scp": "tests/imaging/test_scp.py::test_storescu_from_allowlisted_ae_stores_and_is_audited",
    "pacs_worker": ("tests/imaging/test_pacs.py::"
                    "test_a_result_goes_back_to_the_pacs_with_the_hospitals_patient_id_and_study_uid"),
    "store": "tests/imaging/test_store_budget.py::test_evict_least_recently_opened_first_until_under_budget",
    r"^ws/viewer/(?P<study>[0-9.]{1,64})/$":
        "tests/rendering/test_consumer.py::test_start_and_end_of_the_render_session_are_audited",
}
# Project commands that touch no patient data and change no access; why each is silent.
SILENT_COMMANDS = {
    "make_phantom": "writes synthetic DICOM files; no patient or account is touched",
    "access_matrix": "writes or checks docs/access-matrix.md from the policy module",
    "translations": "writes or checks the translation catalogues under locale/ from the source",
    "render_worker": ("renders only on signed requests from gateway processes, which have "
                      "already authorised and audited the render session (render.start/end); "
                      "it holds no principal to audit and no access decision of its own"),
    "serve": ("starts and restarts daphne processes; every request and websocket they serve "
              "is audited by its own view or consumer"),
    "build_volumes": ("builds render volumes of series whose ingest was already audited; "
                      "it acts for no principal and grants no access"),
}


@pytest.fixture
def people(person, clock, keys_dir, checkpoint_dir):
    return {"doctor": person("dr.case", "doctor"), "auditor": person("audit.case", "auditor"),
            "newcomer": person("new.case", "nurse", device=False), "it": person("it.case", "it_admin"),
            "clock": clock}


def named_routes() -> set[str]:
    return {route.view_name for route in http_routes()}


def _one_instance():
    from imaging.phantom import phantom_write

    out = Path(tempfile.mkdtemp(prefix="coverage-phantom-"))
    phantom_write(out_dir=out, slices=32)
    return next(out.rglob("*.dcm"))


def _one_raw_volume() -> Path:
    import numpy as np
    import SimpleITK as sitk

    path = Path(tempfile.mkdtemp(prefix="coverage-raw-")) / "volume.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8)), str(path))
    return path


def _one_model() -> tuple[str, str]:
    """(a model file, its manifest's path): the bytes are not run here, only digested."""
    import json

    folder = Path(tempfile.mkdtemp(prefix="coverage-model-"))
    (folder / "model.onnx").write_bytes(b"not run at registration")
    (folder / "manifest.json").write_text(json.dumps({
        "name": "coverage", "version": "1", "input_size": [8, 8, 8], "input_spacing_mm": [1, 1, 1],
        "normalisation": {"kind": "none"}, "provenance": {},
        "output": {"kind": "argmax", "labels": [{"value": 1, "name": "a", "colour": "#ff0000"}]}}))
    return str(folder / "model.onnx"), f"--manifest={folder / 'manifest.json'}"


def _project_commands() -> set[str]:
    return {name for name, app in get_commands().items()
            if app.split(".")[0] in {"gateway", "accounts", "imaging", "rendering"}}


def test_every_route_is_mapped():
    unmapped = {name for name in named_routes() if not name.startswith("admin:")} - set(ROUTE_CASES)
    assert unmapped == set(), f"routes with no audit mapping: {sorted(unmapped)}"


def test_every_websocket_route_is_mapped():
    assert set(WEBSOCKET_ROUTES) <= set(ROUTE_CASES) | set(PROVED_ELSEWHERE)


def test_every_command_is_mapped():
    unmapped = _project_commands() - set(COMMAND_CASES) - set(SILENT_COMMANDS)
    assert unmapped - set(PROVED_ELSEWHERE) == set()


@pytest.mark.parametrize("proof", sorted(PROVED_ELSEWHERE.values()))
def test_the_proofs_named_elsewhere_exist(proof):
    path, _, name = proof.partition("::")
    assert f"def {name}(" in (REPO / path).read_text() or f"async def {name}(" in (
        REPO / path).read_text()


@pytest.mark.parametrize(("route", "label"),
                         [(route, label) for route, cases in ROUTE_CASES.items()
                          for label, _ in cases])
def test_route_emits_its_events(client, people, route, label,
                                django_capture_on_commit_callbacks):
    case = dict(ROUTE_CASES[route])[label]
    before = _head()
    with django_capture_on_commit_callbacks(execute=True):
        case.act(client, people)
    assert _new_actions(before) == list(case.emits)


@pytest.mark.parametrize("command", sorted(COMMAND_CASES))
def test_command_emits_its_events(people, command, django_capture_on_commit_callbacks):
    run, emits = COMMAND_CASES[command]
    before = _head()
    with django_capture_on_commit_callbacks(execute=True):
        run()
    assert sorted(_new_actions(before)) == sorted(emits)


def test_rules_and_routes_agree():
    assert {name for name in named_routes() if not name.startswith("admin:")} <= set(ROUTES)
