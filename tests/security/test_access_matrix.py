"""docs/access-matrix.md, the policy and the resolvers agree; the policy denies by default."""

from dataclasses import dataclass

import pytest
from django.conf import settings

from gateway.policy import (
    ROUTES,
    WEBSOCKET_ROUTES,
    Access,
    Permission,
    PrincipalSketch,
    Stage,
    matrix_markdown,
    may,
    route_access,
    route_rule,
)
from tests.security.inventory import http_routes, websocket_routes

DOC = settings.BASE_DIR / "docs" / "access-matrix.md"


def test_the_document_is_generated_from_the_policy():
    assert DOC.read_text(encoding="utf-8") == matrix_markdown(), (
        "docs/access-matrix.md is stale: run python manage.py access_matrix --write")


def test_every_http_route_has_a_rule_and_every_rule_a_route():
    names = [route.view_name for route in http_routes()]
    missing = [name for name in names if route_rule(name) is None]
    assert missing == [], f"routes without an access-matrix entry: {missing}"
    used = {name if name in ROUTES else name.rpartition(":")[0] + ":*" for name in names}
    assert set(ROUTES) == used, f"matrix entries without a route: {set(ROUTES) - used}"


def test_every_websocket_route_has_a_rule_and_every_rule_a_route():
    assert set(websocket_routes()) == set(WEBSOCKET_ROUTES)


def test_an_unlisted_route_is_denied_to_everyone():
    for principal in (PrincipalSketch("x", role="it_admin"), PrincipalSketch("y", role="doctor")):
        assert route_access(principal, route_rule("somewhere:new")) is Access.DENY
        assert route_access(principal, None) is Access.DENY


@dataclass
class Share:
    allowed: str
    is_capability: bool = True

    def grants(self, permission, resource):
        return resource == self.allowed


def test_may_denies_by_default():
    doctor = PrincipalSketch("d", role="doctor")
    assert may(doctor, Permission.STUDY_VIEW)
    assert not may(PrincipalSketch("d", role="doctor", verified=False), Permission.STUDY_VIEW)
    assert not may(PrincipalSketch("d", role="doctor", is_active=False), Permission.STUDY_VIEW)
    assert not may(PrincipalSketch("r", role="radiographer"), Permission.STUDY_VIEW)
    assert not may(None, Permission.STUDY_VIEW)
    assert not may(PrincipalSketch("a", role="admin_staff"), Permission.STUDY_VIEW)
    assert not may(PrincipalSketch("i", role="it_admin"), Permission.STUDY_VIEW)
    assert not may(PrincipalSketch("u", role="auditor"), Permission.STUDY_VIEW)
    assert not may(PrincipalSketch("u", role="auditor"), Permission.AUDIT_RESOLVE)  # individual grant
    # A device account in a browser session has not presented its device credential.
    assert not may(PrincipalSketch("s", role="device"), Permission.STUDY_INGEST)


def test_a_capability_reaches_only_its_resource_and_actions():
    share = Share(allowed="study-1")
    assert may(share, Permission.STUDY_VIEW, "study-1")
    assert not may(share, Permission.STUDY_VIEW, "study-2")
    assert not may(share, Permission.STUDY_VIEW)
    assert not may(share, Permission.STUDY_SHARE, "study-1")
    assert not may(share, Permission.PATIENT_SEARCH, "study-1")


@pytest.mark.parametrize("role", ["doctor", "nurse", "admin_staff", "device", "auditor"])
def test_only_it_admins_reach_the_admin(role):
    rule = route_rule("admin:index")
    assert rule is not None and rule.stage is Stage.SIGNED_IN
    assert route_access(PrincipalSketch(role, role=role), rule) is Access.DENY
    assert route_access(PrincipalSketch("it", role="it_admin"), rule) is Access.ALLOW
