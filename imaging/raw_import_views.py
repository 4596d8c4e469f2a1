"""The raw import page: a NIfTI, NRRD or MetaImage volume and a form naming its patient and study.

The upload is a multipart POST. Its size is bounded before the body is read
(:mod:`imaging.raw_import_asgi` admits it on its headers); here the one file
field is streamed by :class:`RawVolumeUploadHandler` straight into a private
directory under ``var/raw-import`` (no copy held in memory), which is removed
when the request ends, whatever happens. The conversion, the access check
on a study to join and the audit are :func:`imaging.raw_import.raw_volume_import`'s.

CSRF is checked as on every form, but by the inner view (``csrf_protect``):
Django's middleware would parse the body before the view could install the
upload handler.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from django import forms
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, StopFutureHandlers
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from gateway.access import require
from gateway.audit.catalogue import Action
from gateway.net import client_address
from gateway.policy import Permission, may
from imaging import conf
from imaging.access import StudyNotFound
from imaging.raw_import import (
    UPLOAD_SUFFIXES,
    ExistingStudy,
    NewStudy,
    RawImportRefused,
    RawImportResult,
    SeriesFacts,
    raw_format_of,
    raw_volume_import,
)

log = logging.getLogger(__name__)

FILE_FIELD = "volume"
STALE_SPOOL_S = 6 * 3600  # a directory this old was left by a killed process
MODALITY_CHOICES = [
    ("CT", _("CT (CT Image)")),
    ("MR", _("MR (MR Image)")),
    ("PT", _("PET values as given, no SUV (secondary capture)")),
    ("NM", _("NM values as given (secondary capture)")),
    ("OT", _("Other (secondary capture)")),
]
SEX_CHOICES = [("", _("not known")), ("F", _("female")), ("M", _("male")), ("O", _("other"))]
NEW_STUDY_FIELDS = ("patient_name", "patient_id", "issuer_of_patient_id", "birth_date", "sex",
                    "study_description", "study_date")
EXISTING_STUDY_FIELDS = ("study", "frame_of_reference_series")
SERIES_FIELDS = ("modality", "series_description")
TARGET_CHOICES = [("new", _("a new study")), ("existing", _("an existing study"))]


class RawVolumeUploadHandler(FileUploadHandler):
    """Writes the form's one volume file into ``directory`` as ``volume<suffix>``, bounded.

    Any other file field, a second file, or a name that is not an upload format
    is skipped (the refusal is kept for the form). The suffix chooses
    SimpleITK's reader, so the file on disk is named by the format, never by
    the client.
    """

    def __init__(self, request: HttpRequest, *, directory: Path, limit: int) -> None:
        super().__init__(request)
        self.directory = directory
        self.limit = limit
        self.path: Path | None = None
        self.refusal = ""
        self._handle: Any = None
        self._received = 0

    def new_file(self, field_name: str, file_name: str, content_type: str, content_length: int | None,
                 charset: str | None = None, content_type_extra: dict[str, Any] | None = None) -> None:
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        if field_name != FILE_FIELD or self.path is not None:
            raise SkipFile()
        try:
            raw_format = raw_format_of(file_name or "")
        except RawImportRefused as refused:
            self.refusal = refused.message
            raise SkipFile() from None
        self.path = self.directory / f"volume{raw_format.suffix}"
        self._handle = self.path.open("xb")
        raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self._received += len(raw_data)
        if self._received > self.limit:
            self.refusal = str(_("The file is larger than the import limit of %(limit)d bytes.")
                               % {"limit": self.limit})
            self._discard()
            raise SkipFile()
        self._handle.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> UploadedFile | None:
        if self._handle is None or self.path is None:
            return None
        self._handle.close()
        self._handle = None
        return UploadedFile(file=self.path.open("rb"), name=self.file_name, content_type=self.content_type,
                            size=file_size, charset=self.charset)

    def upload_interrupted(self) -> None:
        self._discard()

    def _discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class RawImportForm(forms.Form):
    volume = forms.FileField(label=_("Volume file"), help_text=_("NIfTI (.nii, .nii.gz), NRRD (.nrrd) or "
                                                                 "MetaImage (.mha), one file"))
    target = forms.ChoiceField(label=_("Import into"), choices=TARGET_CHOICES, initial="new",
                               widget=forms.RadioSelect)
    patient_name = forms.CharField(label=_("Patient name"), max_length=64, required=False,
                                   help_text=_("Family^Given, or Family, Given"))
    patient_id = forms.CharField(label=_("Patient ID"), max_length=64, required=False)
    issuer_of_patient_id = forms.CharField(label=_("Issuer of the patient ID"), max_length=64, required=False)
    birth_date = forms.DateField(label=_("Birth date"), required=False,
                                 widget=forms.DateInput(attrs={"type": "date"}))
    sex = forms.ChoiceField(label=_("Sex"), choices=SEX_CHOICES, required=False)
    study_description = forms.CharField(label=_("Study description"), max_length=64, required=False)
    study_date = forms.DateField(label=_("Study date"), required=False,
                                 widget=forms.DateInput(attrs={"type": "date"}))
    study = forms.CharField(label=_("Study"), max_length=64, required=False,
                            help_text=_("the study's identifier as the viewer's address shows it"))
    frame_of_reference_series = forms.CharField(
        label=_("Same frame of reference as series"), max_length=64, required=False,
        help_text=_("optional: a series of that study the volume was computed from or registered to"))
    modality = forms.ChoiceField(label=_("Modality"), choices=MODALITY_CHOICES, initial="OT")
    series_description = forms.CharField(label=_("Series description"), max_length=64, required=False)

    def clean_patient_name(self) -> str:
        name = self.cleaned_data["patient_name"].strip()
        if "^" not in name and "," in name:
            family, _comma, given = name.partition(",")
            name = f"{family.strip()}^{given.strip()}"
        return name

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("target") == "existing":
            if not cleaned.get("study"):
                self.add_error("study", _("Name the study to import into."))
        else:
            for field in ("patient_name", "patient_id"):
                if not cleaned.get(field):
                    self.add_error(field, _("A new study needs the patient's name and ID."))
        return cleaned

    def target_study(self) -> NewStudy | ExistingStudy:
        data = self.cleaned_data
        if data["target"] == "existing":
            return ExistingStudy(study_uid=data["study"].strip(),
                                 frame_of_reference_series=data["frame_of_reference_series"].strip())
        return NewStudy(patient_name=data["patient_name"], patient_id=data["patient_id"].strip(),
                        issuer_of_patient_id=data["issuer_of_patient_id"].strip(),
                        birth_date=data["birth_date"], sex=data["sex"] or "",
                        study_description=data["study_description"].strip(), study_date=data["study_date"])

    def series_facts(self) -> SeriesFacts:
        return SeriesFacts(modality=self.cleaned_data["modality"],
                           description=self.cleaned_data["series_description"].strip())


def _spool_directory() -> Path:
    """A private directory for one upload; directories a killed process left behind are removed."""
    root = conf.raw_import_spool_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    cutoff = time.time() - STALE_SPOOL_S
    for stale in root.iterdir():
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="upload-", dir=root))


def _page(request: HttpRequest, form: RawImportForm, *, status: int = 200,
          result: RawImportResult | None = None, error: str = "") -> HttpResponse:
    return render(request, "imaging/raw_import.html", {
        "form": form, "result": result,
        "new_fields": [form[name] for name in NEW_STUDY_FIELDS],
        "existing_fields": [form[name] for name in EXISTING_STUDY_FIELDS],
        "series_fields": [form[name] for name in SERIES_FIELDS], "error": error, "suffixes": UPLOAD_SUFFIXES,
        "opens": result is not None and may(request.user, Permission.STUDY_VIEW, result.study_uid),
    }, status=status)


@csrf_exempt  # checked by _submitted, once the upload handler is in place
@require_http_methods(["GET", "POST"])
@require(Permission.STUDY_IMPORT_RAW, audit_as=Action.INGEST)
def raw_import(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        initial: dict[str, Any] = {"study_date": timezone.localdate()}
        if request.GET.get("study"):
            initial.update({"target": "existing", "study": request.GET["study"][:64]})
        return _page(request, RawImportForm(initial=initial))
    directory = _spool_directory()
    try:
        handler = RawVolumeUploadHandler(request, directory=directory, limit=conf.max_object_bytes())
        request.upload_handlers = [handler]
        return _submitted(request, handler)
    finally:
        request.close()  # the uploaded file's handle, before its directory goes
        shutil.rmtree(directory, ignore_errors=True)


@csrf_protect
def _submitted(request: HttpRequest, handler: RawVolumeUploadHandler) -> HttpResponse:
    form = RawImportForm(request.POST, request.FILES)
    valid = form.is_valid()
    if handler.refusal:
        form.add_error("volume", handler.refusal)
        valid = False
    if not valid or handler.path is None:
        return _page(request, form, status=400)
    upload = form.cleaned_data["volume"]
    try:
        result = raw_volume_import(principal=request.user, path=handler.path, filename=upload.name,
                                   study=form.target_study(), series=form.series_facts(),
                                   source_ip=client_address(request) or "")
    except StudyNotFound:
        raise Http404("No such study.") from None
    except RawImportRefused as refused:
        return _page(request, form, status=422, error=refused.message)
    return _page(request, RawImportForm(initial={"study_date": timezone.localdate()}), result=result)
