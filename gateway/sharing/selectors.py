"""Reads of the sharing app."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q
from django.utils import timezone

from gateway.policy import Permission, may
from gateway.sharing.models import LIVE_STATES
from gateway.sharing.principal import ConsultantPrincipal
from imaging.models import Study


@dataclass(frozen=True)
class SharedStudy:
    """What a consultant is shown of a study: pseudonym and description, nothing else."""

    study_uid: str
    description: str
    pseudonym: str


def shared_studies(principal: ConsultantPrincipal) -> list[SharedStudy]:
    """The studies this share grants (asked of the policy, study by study)."""
    patients = principal.token.patients
    if len(patients) != 1:
        return []
    studies = (Study.objects.filter(patient__pseudonym__in=patients).select_related("patient")
               .order_by("study_date", "id"))
    return [SharedStudy(s.study_instance_uid, s.study_description or "study",
                        s.patient.pseudonym[:12])
            for s in studies if may(principal, Permission.STUDY_VIEW, s.study_instance_uid)]


def shares_live(queryset):
    return queryset.filter(Q(state__in=LIVE_STATES) & Q(expires_at__gt=timezone.now()))
