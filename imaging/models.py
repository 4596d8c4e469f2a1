"""Clinical-zone imaging records: pseudonymised and de-identified only.

Nothing here names a patient: ``Patient.pseudonym`` is an HMAC of the issuer and
patient ID under a key the clinical zone does not hold; UIDs are replacements;
dates are shifted per patient. The identifying side lives in
:mod:`imaging.identity.models` (identity zone).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from gateway.i18n import gettext_noop
from rendering.said import SaidError


class Patient(models.Model):
    pseudonym = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"patient {self.pseudonym[:12]}"


class Study(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField(max_length=64, unique=True)
    study_date = models.DateField(null=True, blank=True, help_text="shifted per patient")
    study_time = models.CharField(max_length=32, blank=True)
    study_description = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_opened_at = models.DateTimeField(null=True, blank=True,
                                          help_text="last opened in the viewer: a recently opened study is "
                                                    "never evicted from the store")
    priors_checked_at = models.DateTimeField(null=True, blank=True,
                                             help_text="when the PACS was asked for this study's priors")

    class Meta:
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return self.study_instance_uid


class VolumeState(models.TextChoices):
    PENDING = "pending"
    READY = "ready"
    REFUSED = "refused"


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    modality = models.CharField(max_length=16, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_description = models.CharField(max_length=128, blank=True)
    frame_of_reference_uid = models.CharField(max_length=64, blank=True)
    pixels_may_identify = models.BooleanField(
        default=False, help_text="burned-in annotation declared, or a modality prone to it")
    volume_state = models.CharField(max_length=16, choices=VolumeState.choices,
                                    default=VolumeState.PENDING)
    volume_object = models.CharField(max_length=80, blank=True)
    volume_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return self.series_instance_uid


class Instance(models.Model):
    series = models.ForeignKey(Series, on_delete=models.PROTECT, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    sop_class_uid = models.CharField(max_length=64)
    transfer_syntax_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    number_of_frames = models.IntegerField(default=1)
    object_id = models.CharField(max_length=80, unique=True)
    size = models.BigIntegerField()
    received_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.sop_instance_uid


class DeviceEndpoint(models.Model):
    """How one device account reaches the ingest doors.

    ``ae_title`` is the calling AE title allowed to associate with the SCP;
    ``token_hash`` is SHA-256 of the STOW-RS bearer token (the token itself is
    shown once, at creation, and never stored).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="device_endpoints", verbose_name=_("user"))
    ae_title = models.CharField(_("ae title"), max_length=16, unique=True)
    token_hash = models.CharField(_("token hash"), max_length=64, unique=True, null=True, blank=True)
    active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("device endpoint")
        verbose_name_plural = _("device endpoints")

    def __str__(self) -> str:
        return f"device {self.ae_title}"


class Finding(models.Model):
    """A measurement a reader kept, with its numbers as the server computed them (pseudonymised)."""

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="findings")
    series_instance_uid = models.CharField(max_length=64)
    label = models.CharField(max_length=64)
    tool = models.CharField(max_length=16)
    points = models.JSONField(help_text="viewport pixels on the plane below")
    plane = models.JSONField(null=True, help_text="the view's plane (patient mm) when measured")
    result = models.JSONField(help_text="per-layer statistics, as computed")
    arguments = models.JSONField(default=dict, blank=True,
                                 help_text="the tool's settings besides its points (radius, box, threshold)")
    author = models.CharField(max_length=150, help_text="user name, or share:<id> for a consultant")
    by_consultant = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ("created_at", "id")

    def __str__(self) -> str:
        return f"{self.label} ({self.tool})"


class Segmentation(models.Model):
    """A reader's segmentation of one series: its segments and the edits that draw them (pseudonymised).

    The label map at ``revision`` is edits 1..revision replayed (:mod:`rendering.segment_ops`);
    undo moves ``revision`` back and redo forward, a new edit drops those undone.
    """

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="segmentations")
    series_instance_uid = models.CharField(max_length=64, help_text="the reference series: the label grid")
    label = models.CharField(max_length=64)
    segments = models.JSONField(default=list, help_text="number, name, colour, visible, opacity of each")
    revision = models.IntegerField(default=0)
    author = models.CharField(max_length=150, help_text="user name, or share:<id> for a consultant")
    by_consultant = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("created_at", "id")

    def __str__(self) -> str:
        return f"{self.label} (rev {self.revision})"


class SegmentationEdit(models.Model):
    """One edit of a segmentation, as the reader made it (positions in patient mm)."""

    segmentation = models.ForeignKey(Segmentation, on_delete=models.CASCADE, related_name="edits")
    revision = models.IntegerField()
    op = models.JSONField()
    author = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("revision",)
        constraints = [models.UniqueConstraint(fields=("segmentation", "revision"),
                                               name="one_edit_per_revision")]

    def __str__(self) -> str:
        return f"{self.segmentation_id}@{self.revision}: {self.op.get('tool')}"


class SegmentationModel(models.Model):
    """A trained segmentation model IT registered: its file, the file's SHA-256 and its manifest.

    The file stays where IT put it on the server; a worker reads it, checks the digest and runs
    it (:mod:`rendering.engine.onnx_models`). Nothing is ever downloaded.
    """

    name = models.CharField(max_length=64)
    version = models.CharField(max_length=64)
    path = models.CharField(max_length=1024, help_text="the ONNX file on the server")
    sha256 = models.CharField(max_length=64)
    manifest = models.JSONField()
    registered_by = models.CharField(max_length=150)
    registered_at = models.DateTimeField(auto_now_add=True)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ("name", "version")
        constraints = [models.UniqueConstraint(fields=("name", "version"), name="one_model_version")]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class ModelRun(models.Model):
    """One run of a segmentation model: its progress, written by the worker as tiles finish."""

    segmentation = models.ForeignKey(Segmentation, on_delete=models.CASCADE, related_name="model_runs")
    model = models.ForeignKey(SegmentationModel, on_delete=models.PROTECT, related_name="runs")
    tiles_done = models.IntegerField(default=0)
    tiles_total = models.IntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.model} on {self.segmentation_id}: {self.tiles_done}/{self.tiles_total}"


class ReportStatus(models.TextChoices):
    DRAFT = "draft", _("draft")
    SIGNED = "signed", _("signed")


class ReportSigned(SaidError, ValueError):
    """A signed report is final: it is never changed, only followed by an addendum (said to the reader)."""


class Report(models.Model):
    """One version of a study's report: sections, key images (view states, re-rendered live) and
    the study's findings; version 2 and later are addenda to the signed version before them.

    Pseudonymised like everything in this zone: the patient is the study's pseudonym.
    """

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="reports")
    version = models.IntegerField(default=1)
    status = models.CharField(max_length=8, choices=ReportStatus.choices, default=ReportStatus.DRAFT)
    title = models.CharField(max_length=128, default="Report")
    sections = models.JSONField(default=dict, help_text="clinical information, findings, impression, "
                                                        "comments: plain text")
    key_images = models.JSONField(default=list, help_text="each: id, caption, study, the view state")
    grid = models.JSONField(default=list, help_text="[columns, rows] of key images per page")
    include_findings = models.BooleanField(default=True)
    findings = models.JSONField(null=True, blank=True, help_text="the findings table as signed")
    author = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    signed_by = models.CharField(max_length=150, blank=True)
    signed_at = models.DateTimeField(null=True, blank=True)
    content_sha256 = models.CharField(max_length=64, blank=True,
                                      help_text="of the signed content, as signed")
    pdf_series_instance_uid = models.CharField(max_length=64, blank=True,
                                               help_text="the Encapsulated PDF and KOS added at signing")

    class Meta:
        ordering = ("study", "version")
        constraints = [models.UniqueConstraint(fields=("study", "version"), name="one_report_version")]

    def __str__(self) -> str:
        return f"report v{self.version} ({self.status})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and Report.objects.filter(pk=self.pk, status=ReportStatus.SIGNED).exists():
            raise ReportSigned(gettext_noop("this report is signed; write an addendum instead"))
        super().save(*args, **kwargs)


class ReportLetterhead(models.Model):
    """The hospital's header and footer on every report page, set by IT (one row)."""

    hospital = models.CharField(max_length=128, blank=True)
    department = models.CharField(max_length=128, blank=True)
    logo_png = models.BinaryField(blank=True, default=b"", help_text="PNG, at most 256 KiB")
    header_fields = models.JSONField(default=list, help_text="which fields the header shows, in order")
    footer = models.CharField(max_length=256, blank=True)
    updated_by = models.CharField(max_length=150, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"letterhead: {self.hospital or 'unnamed'}"


class RetrieveMethod(models.TextChoices):
    NONE = "", _("none (send only)")
    C_GET = "c-get", "C-GET"
    C_MOVE = "c-move", _("C-MOVE to the gateway's SCP")
    WADO_RS = "wado-rs", "WADO-RS (DICOMweb)"


class DicomDestination(models.Model):
    """A DICOM peer IT registered: a destination for what the gateway sends (signed reports) and,
    where ``retrieve`` is set, a PACS the worklist searches (C-FIND) and retrieves from."""

    name = models.CharField(max_length=64, unique=True)
    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=253)
    port = models.IntegerField()
    tls = models.BooleanField(default=False, help_text="associate over TLS (GATEWAY_PACS_TLS_CA verifies)")
    dicomweb_url = models.CharField(max_length=500, blank=True,
                                    help_text="DICOMweb base URL: search (QIDO-RS), retrieve (WADO-RS) "
                                              "and send (STOW-RS) there instead of over DIMSE")
    retrieve = models.CharField(max_length=8, choices=RetrieveMethod.choices, default=RetrieveMethod.NONE,
                                blank=True, help_text="query/retrieve method; empty: not a PACS")
    send_results = models.BooleanField(
        default=False, help_text="results made here (SR, SEG, REG, KOS, PDF) are queued to it, re-identified")
    active = models.BooleanField(default=True)
    registered_by = models.CharField(max_length=150)
    registered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"


class RegistrationState(models.TextChoices):
    RUNNING = "running", _("running")
    # Translators: a registration the computer proposes, not yet accepted or rejected by a doctor.
    PROPOSED = "proposed", _("proposed")
    ACCEPTED = "accepted", _("accepted")
    REJECTED = "rejected", _("rejected")
    FAILED = "failed", _("failed")
    CANCELLED = "cancelled", _("cancelled")


class Registration(models.Model):
    """A spatial registration of one series onto another: the 4x4 matrix taking the moving series'
    patient mm into the fixed series' frame, how it was found, and whether a doctor accepted it.

    Accepted registrations (and incoming REG objects) let the viewer fuse series of different
    frames of reference; an accepted one is also in the study as a DICOM REG (``reg_series``).
    """

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="registrations",
                              help_text="the fixed series' study")
    fixed_series = models.CharField(max_length=64)
    moving_series = models.CharField(max_length=64)
    fixed_frame = models.CharField(max_length=64)
    moving_frame = models.CharField(max_length=64)
    method = models.CharField(max_length=24, help_text="rigid, affine, landmarks, manual, incoming")
    matrix = models.JSONField(null=True, help_text="16 numbers, row-major, moving mm -> fixed mm")
    state = models.CharField(max_length=12, choices=RegistrationState.choices,
                             default=RegistrationState.RUNNING)
    metric = models.FloatField(null=True, blank=True)
    landmarks = models.JSONField(default=list, blank=True, help_text="[[fixed mm], [moving mm]] pairs")
    error_mm = models.FloatField(null=True, blank=True, help_text="landmarks: RMS residual")
    progress_done = models.IntegerField(default=0)
    progress_total = models.IntegerField(default=0)
    cancel_asked = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    author = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    reg_series = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ("created_at", "id")

    def __str__(self) -> str:
        return f"{self.method} {self.moving_series} -> {self.fixed_series} ({self.state})"


class DerivedSeries(models.Model):
    """A series computed from others: a filter of one, or image arithmetic of several (resampled
    onto the first through registrations). Its voxels are made by a render worker when shown and
    kept in its cache, never stored as if acquired; its layer id is ``drv:<id>``."""

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="derived_series",
                              help_text="the reference (first input) series' study")
    kind = models.CharField(max_length=12, help_text="filter or arithmetic")
    operation = models.CharField(max_length=48)
    parameters = models.JSONField(default=dict, blank=True)
    dims = models.IntegerField(default=3)
    inputs = models.JSONField(help_text="[{series, weight, matrix (16, into the first; null: same frame)}]")
    description = models.CharField(max_length=128)
    shown = models.JSONField(null=True, blank=True,
                             help_text="its geometry and value range once a worker has made it")
    author = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("created_at", "id")

    def __str__(self) -> str:
        return f"drv:{self.pk} {self.description}"


class JobState(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


class Retrieval(models.Model):
    """One study retrieved from a PACS through the ingest pipeline; drained by ``pacs_worker``.

    Only replacement UIDs here: the original Study Instance UID is in the identity zone's
    :class:`~imaging.identity.models.RemoteStudy` (``remote_study``, its id)."""

    source = models.ForeignKey(DicomDestination, on_delete=models.PROTECT, related_name="retrievals")
    remote_study = models.BigIntegerField(help_text="identity-zone RemoteStudy id")
    study_instance_uid = models.CharField(max_length=64, db_index=True, help_text="replacement UID")
    pseudonym = models.CharField(max_length=64)
    method = models.CharField(max_length=8, choices=RetrieveMethod.choices)
    state = models.CharField(max_length=12, choices=JobState.choices, default=JobState.QUEUED)
    reason = models.CharField(max_length=32, blank=True, help_text="open, prefetch")
    expected = models.IntegerField(default=0)
    received = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    series = models.JSONField(default=list, blank=True,
                              help_text="[{uid (replacement), modality, description, expected, received, "
                                        "complete}]")
    error = models.TextField(blank=True)
    requested_by = models.CharField(max_length=150)
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("requested_at", "id")

    def __str__(self) -> str:
        return f"retrieval {self.pk} of {self.study_instance_uid} ({self.state})"


class PacsSend(models.Model):
    """One result object queued for a PACS: durable, retried with back-off until it is delivered.

    The stored object stays pseudonymised; it is re-identified for this destination only, in
    memory, at the moment it is sent."""

    destination = models.ForeignKey(DicomDestination, on_delete=models.PROTECT, related_name="sends")
    sop_instance_uid = models.CharField(max_length=64, help_text="replacement UID of the stored object")
    study_instance_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    state = models.CharField(max_length=12, choices=JobState.choices, default=JobState.QUEUED)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_error = models.TextField(blank=True)
    queued_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("queued_at", "id")
        constraints = [models.UniqueConstraint(fields=["destination", "sop_instance_uid"],
                                               name="pacs_send_once_per_destination")]

    def __str__(self) -> str:
        return f"send {self.sop_instance_uid} to {self.destination_id} ({self.state})"


class ReadingBookmark(models.Model):
    """A reader's whole reading state of one study (tabs, layouts, every view), kept under a name.

    A viewing preference of one account, like a hanging rule, so saving and deleting one is not
    audited; sharing one with a consultant's share is (``imaging.bookmarks``).
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                              related_name="reading_bookmarks")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reading_bookmarks")
    name = models.CharField(max_length=64)
    state = models.JSONField(help_text="the viewer's reading state, a JSON object of at most 64 KiB")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-updated_at", "-id")
        constraints = [models.UniqueConstraint(fields=["owner", "study", "name"],
                                               name="imaging_bookmark_name_once")]

    def __str__(self) -> str:
        return f"bookmark {self.pk} of user {self.owner_id} on study {self.study_id}"


class ReadingBookmarkShare(models.Model):
    """A bookmark shown to the holders of one share (and of the shares forwarded from it)."""

    bookmark = models.ForeignKey(ReadingBookmark, on_delete=models.CASCADE, related_name="shared")
    share = models.ForeignKey("sharing.Share", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bookmark", "share"],
                                               name="imaging_bookmark_shared_once")]

    def __str__(self) -> str:
        return f"bookmark {self.bookmark_id} shared with share {self.share_id}"
