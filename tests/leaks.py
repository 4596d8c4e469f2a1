"""The leak search: identifying strings of the input, and everything outside the identity zone to look in."""

from __future__ import annotations

from pathlib import Path

import pydicom
from django.db import connections


def identifying_strings(paths: list[Path], truth: dict) -> set[str]:
    """Every identifying value of the phantom's truth and of the files' headers (5+ characters)."""
    secrets: set[str] = set()
    for patient in truth["patients"]:
        secrets.update(str(v) for v in patient["identity"].values())
        secrets.update(patient["identity"]["patient_name"].split("^"))
        for key in ("study_instance_uid", "frame_of_reference_uid", "ct_series_instance_uid",
                    "pet_series_instance_uid"):
            secrets.add(patient[key])
    keywords = ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "AccessionNumber",
                "ReferringPhysicianName", "InstitutionName", "OperatorsName", "StudyID",
                "PerformingPhysicianName", "StationName", "DeviceSerialNumber", "OtherPatientIDs",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                "InstitutionAddress", "PatientTelephoneNumbers")
    retained: set[str] = set()  # values of kept attributes (a manufacturer named as an institution)
    for path in paths:
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            for keyword in ("Manufacturer", "ManufacturerModelName"):
                retained.add(str(ds.get(keyword, "")))
            retained.add(str(ds.file_meta.get("ImplementationVersionName", "")).rstrip("_DCMTK"))
            for keyword in keywords:
                value = ds.get(keyword)
                if value:
                    secrets.add(str(value))
                    secrets.update(str(value).split("^"))
        except Exception:  # noqa: S112 - unreadable files are rejected, not searched for
            continue
    # PATIENT: a placeholder name part (NAME^PATIENT^NAME) and a coded value a kept SR content
    # tree holds (Observation Context Mode = PATIENT, PS3.16 CID 6): vocabulary, not identity.
    generic = {"ANONYMOUS", "ANONYMIZED", "Anonymized", "Anonymous", "Unknown", "UNKNOWN", "NONE", "PATIENT"}
    return {s.strip() for s in secrets
            if len(s.strip()) >= 5 and s.strip() not in generic
            and not any(s.strip() in kept for kept in retained)
            and len(set(s.strip())) > 1 and not (s.strip().isdigit() and len(s.strip()) < 8)}


def clinical_rows() -> str:
    """Every row of the clinical and audit databases, as text to search."""
    lines = []
    for alias in ("default", "audit"):
        connection = connections[alias]
        tables = connection.introspection.table_names()
        with connection.cursor() as cursor:
            for table in tables:
                cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from introspection
                lines.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(lines)
