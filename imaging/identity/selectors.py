"""Reads from the identity zone. Every caller must have been authorised by the policy."""

from __future__ import annotations

from imaging.identity.models import PatientIdentity


def pseudonyms_for_patient(*, patient_id: str, issuer: str | None = None) -> list[str]:
    """Pseudonyms of the patient(s) with this ID (under one issuer, or any)."""
    identities = PatientIdentity.objects.filter(patient_id=patient_id)
    if issuer:
        identities = identities.filter(issuer_of_patient_id=issuer)
    return sorted(identities.values_list("pseudonym", flat=True))


def patient_sex_of(*, pseudonym: str) -> str:
    """The patient's sex as the modality recorded it (M, F, O or empty): the lean and ideal body
    mass SUVs need it, and it is kept in the identity zone only."""
    found = PatientIdentity.objects.filter(pseudonym=pseudonym).values_list("patient_sex", flat=True).first()
    return str(found or "").strip().upper()[:1]
