"""Who a pseudonym belongs to. Only the identity database holds these rows."""

from __future__ import annotations

from django.db import models


class PatientIdentity(models.Model):
    """The identifying facts of one patient, keyed by the clinical pseudonym."""

    pseudonym = models.CharField(max_length=64, unique=True)
    issuer_of_patient_id = models.CharField(max_length=64, blank=True)
    patient_id = models.CharField(max_length=64)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    patient_address = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["issuer_of_patient_id", "patient_id"], name="identity_patient_unique"
            ),
        ]
        verbose_name_plural = "patient identities"

    def __str__(self) -> str:
        return f"patient {self.pseudonym[:12]}"
