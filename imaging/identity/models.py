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


class PatientDateShift(models.Model):
    """The one date shift applied to every date of a patient's objects (PS3.15 E.3.6 option).

    Whole days, negative (into the past), drawn at random once per patient; times of
    day are kept, so intervals (PET uptake and decay) are preserved exactly.
    """

    pseudonym = models.CharField(max_length=64, unique=True)
    days = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"date shift of {self.pseudonym[:12]}"


class StudyIdentity(models.Model):
    """Identifying facts of one study: original UID, accession, physicians, real dates."""

    pseudonym = models.CharField(max_length=64, db_index=True)
    study_instance_uid = models.CharField(max_length=64, unique=True)
    original_study_instance_uid = models.CharField(max_length=64)
    accession_number = models.CharField(max_length=64, blank=True)
    study_id = models.CharField(max_length=64, blank=True)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.CharField(max_length=32, blank=True)
    study_description = models.CharField(max_length=128, blank=True)
    referring_physician_name = models.CharField(max_length=324, blank=True)
    performing_physician_names = models.TextField(blank=True)
    operators_names = models.TextField(blank=True)
    institution_name = models.CharField(max_length=128, blank=True)
    institution_address = models.TextField(blank=True)
    station_names = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "study identities"

    def __str__(self) -> str:
        return f"study {self.study_instance_uid}"


class UIDMap(models.Model):
    """Original UID → replacement UID (derived by keyed hash, so always the same one)."""

    original = models.CharField(max_length=64, unique=True)
    replacement = models.CharField(max_length=64, unique=True)
    pseudonym = models.CharField(max_length=64, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "UID map entry"
        verbose_name_plural = "UID map"

    def __str__(self) -> str:
        return self.replacement


class RemoteStudy(models.Model):
    """A study a PACS answered a C-FIND with: identifying, so kept in the identity zone only.

    The worklist shows it and a retrieval names it by id; nothing of it reaches the clinical
    zone before the study itself is retrieved and de-identified by ingest."""

    source = models.BigIntegerField(help_text="clinical-zone DicomDestination id")
    original_study_instance_uid = models.CharField(max_length=64)
    patient_id = models.CharField(max_length=64, blank=True)
    issuer_of_patient_id = models.CharField(max_length=64, blank=True)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    study_date = models.DateField(null=True, blank=True)
    study_description = models.CharField(max_length=128, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    modalities = models.CharField(max_length=128, blank=True)
    series_count = models.IntegerField(null=True, blank=True)
    instance_count = models.IntegerField(null=True, blank=True)
    answered_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "original_study_instance_uid"],
                                               name="remote_study_once_per_source")]

    def __str__(self) -> str:
        return f"remote study {self.pk}"
