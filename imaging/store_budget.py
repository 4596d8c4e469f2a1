"""A bounded local store: studies retrieved from the hospital's PACS are a cache, evicted to a budget.

The PACS keeps the original; the gateway keeps a de-identified, encrypted copy for the viewer. When the
object store grows past ``GATEWAY_STORE_BUDGET_BYTES``, :func:`store_evict` removes retrieved studies,
least recently opened first, until it is under the budget. Only a study the PACS can give back and
nobody is working on is ever evicted (see :func:`_kept_because`): a study pushed by a modality, one
opened recently, one still arriving, and one holding anything made here (a report, findings, a
segmentation, a registration, a derived series, a result being sent, a share) stays.

Evicting a study deletes its clinical rows first, in one transaction, and its objects only once that
transaction has committed: a crash leaves at worst an object no row names (which
:func:`store_collect` removes later), never a row naming a missing object. The identity zone is left
as it is, so a later retrieval of the same study maps to the same replacement UIDs.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.routers import CLINICAL
from gateway.sharing.models import LIVE_STATES, Share
from imaging import conf, storage
from imaging.models import (
    DerivedSeries,
    Finding,
    Instance,
    JobState,
    PacsSend,
    Registration,
    Report,
    Retrieval,
    Segmentation,
    Series,
    Study,
)
from imaging.volumes import volume_object_id

log = logging.getLogger(__name__)

UNFINISHED = (JobState.QUEUED, JobState.RUNNING)
FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
# Objects whose every reference is a column: instances (imaging.services.object_id_for) and volumes
# (imaging.volumes.volume_object_id). Other kinds (a model's label map or probabilities, named in a
# segmentation edit's JSON) are never collected as orphans.
COLLECTABLE_OBJECT = re.compile(r"^(dcm|vol)-[0-9a-f]{64}$")
_CHUNK = 500
# What a study can hold that was made here, by the model's FK to Study.
_MADE_HERE = (("report", Report), ("findings", Finding), ("segmentation", Segmentation),
              ("registration", Registration), ("derived series", DerivedSeries))


@dataclass(frozen=True)
class StudyUsage:
    """One study in the store: what it takes on disk and whether it may be evicted."""

    study_instance_uid: str
    pseudonym: str
    bytes: int
    instances: int
    retrieved: bool
    last_opened_at: datetime | None
    created_at: datetime
    evictable: bool
    kept_because: str


@dataclass(frozen=True)
class StoreReport:
    """The store as measured on disk: every file under the storage directory counts."""

    total_bytes: int
    other_bytes: int
    study_count: int
    studies: list[StudyUsage]
    budget_bytes: int
    keep_opened_s: int


def store_keep_opened_s() -> int:
    """How recently opened a study must not be evicted: the setting, never less than a session lives.

    A viewer may hold a study open as long as its session lives; evicting under it would break
    the reading, so the session's absolute age is the floor whatever the setting says.
    """
    return max(conf.store_keep_opened_s(), int(getattr(settings, "SESSION_COOKIE_AGE", 0)))


def _store_sizes() -> tuple[int, dict[str, int]]:
    """(bytes of every file under the store, object id -> bytes of each object at its own path)."""
    root = conf.storage_dir()
    total = 0
    sizes: dict[str, int] = {}
    if not root.exists():
        return 0, sizes
    for directory, _, names in os.walk(root):
        fan_out = Path(directory).relative_to(root).parts
        for name in names:
            try:
                size = os.stat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue
            total += size
            if len(fan_out) == 2 and not name.startswith(storage.TEMP_PREFIX):
                sizes[name] = size
    return total, sizes


def _kept_because(studies: list[Study]) -> dict[int, tuple[bool, str]]:
    """Study pk -> (whether a PACS retrieval brought it, why it must stay: "" where it may be evicted)."""
    ids = [study.pk for study in studies]
    uids = [study.study_instance_uid for study in studies]
    now = timezone.now()
    opened_after = now - timedelta(seconds=store_keep_opened_s())

    retrieved_series: dict[str, set[str]] = defaultdict(set)
    for uid, series in (Retrieval.objects.using(CLINICAL).filter(study_instance_uid__in=uids,
                                                                  state=JobState.DONE)
                        .values_list("study_instance_uid", "series")):
        retrieved_series[uid].update(str(entry.get("uid", "")) for entry in series or []
                                     if isinstance(entry, dict))
    arriving = set(Retrieval.objects.using(CLINICAL).filter(study_instance_uid__in=uids, state__in=UNFINISHED)
                   .values_list("study_instance_uid", flat=True))
    made_here: dict[int, list[str]] = defaultdict(list)
    for kind, model in _MADE_HERE:
        for study_id in set(model.objects.using(CLINICAL).filter(study_id__in=ids)
                            .values_list("study_id", flat=True)):
            made_here[study_id].append(kind)
    series_of: dict[int, set[str]] = defaultdict(set)
    for study_id, series_uid in (Series.objects.using(CLINICAL).filter(study_id__in=ids)
                                 .values_list("study_id", "series_instance_uid")):
        series_of[study_id].add(series_uid)
    sending = set(PacsSend.objects.using(CLINICAL).filter(study_instance_uid__in=uids, state__in=UNFINISHED)
                  .values_list("study_instance_uid", flat=True))
    shared_studies = set(Share.objects.using(CLINICAL).filter(study_id__in=ids)
                         .values_list("study_id", flat=True))
    shared_patients = set(Share.objects.using(CLINICAL).filter(
        study__isnull=True, state__in=LIVE_STATES, expires_at__gt=now,
        patient_id__in={study.patient_id for study in studies}).values_list("patient_id", flat=True))

    hours = store_keep_opened_s() / 3600
    reasons: dict[int, tuple[bool, str]] = {}
    for study in studies:
        uid = study.study_instance_uid
        why = []
        if uid not in retrieved_series:
            why.append("not retrieved from a PACS")
        elif series_of[study.pk] - retrieved_series[uid]:
            why.append("holds series no retrieval brought (pushed or made here)")
        if study.last_opened_at is not None and study.last_opened_at > opened_after:
            why.append(f"opened within {hours:g} h")
        if uid in arriving:
            why.append("a retrieval is in progress")
        if made_here[study.pk]:
            why.append("holds " + ", ".join(made_here[study.pk]))
        if uid in sending:
            why.append("a result is being sent to the PACS")
        if study.pk in shared_studies or study.patient_id in shared_patients:
            why.append("shared")
        reasons[study.pk] = (uid in retrieved_series, "; ".join(why))
    return reasons


def store_report() -> StoreReport:
    """Measure the store: its size on disk and, per study, its bytes and whether it may be evicted.

    A study's bytes are the files on disk of its instances and of its series' volumes (an object
    missing from disk counts nothing); whatever no study owns (orphans, temporary files, a model's
    label maps) is ``other_bytes``.
    """
    total, sizes = _store_sizes()
    studies = list(Study.objects.using(CLINICAL).select_related("patient").order_by("created_at", "id"))
    reasons: dict[int, tuple[bool, str]] = {}
    for start in range(0, len(studies), _CHUNK):
        reasons.update(_kept_because(studies[start:start + _CHUNK]))
    owned: dict[int, int] = defaultdict(int)
    counts: dict[int, int] = defaultdict(int)
    for study_id, object_id in (Instance.objects.using(CLINICAL).values_list("series__study_id", "object_id")
                                .iterator(chunk_size=5000)):
        owned[study_id] += sizes.get(object_id, 0)
        counts[study_id] += 1
    for study_id, series_uid, volume in (Series.objects.using(CLINICAL)
                                         .values_list("study_id", "series_instance_uid", "volume_object")):
        for object_id in {volume, volume_object_id(series_uid)} - {""}:
            owned[study_id] += sizes.get(object_id, 0)
    usages = [StudyUsage(study_instance_uid=study.study_instance_uid, pseudonym=study.patient.pseudonym,
                         bytes=owned[study.pk], instances=counts[study.pk],
                         retrieved=reasons[study.pk][0], last_opened_at=study.last_opened_at,
                         created_at=study.created_at, evictable=not reasons[study.pk][1],
                         kept_because=reasons[study.pk][1])
              for study in studies]
    return StoreReport(total_bytes=total, other_bytes=total - sum(u.bytes for u in usages),
                       study_count=len(usages), studies=usages, budget_bytes=conf.store_budget_bytes(),
                       keep_opened_s=store_keep_opened_s())


def _eviction_order(usage: StudyUsage) -> tuple[bool, float, float]:
    """Least recently opened first; never opened counts as oldest; then the oldest arrival."""
    opened = usage.last_opened_at.timestamp() if usage.last_opened_at is not None else 0.0
    return usage.last_opened_at is not None, opened, usage.created_at.timestamp()


def store_evict(*, budget_bytes: int, dry_run: bool, actor: str) -> list[StudyUsage]:
    """Evict evictable studies, least recently opened first, until the store is within ``budget_bytes``.

    A budget of 0 means unbounded: nothing is evicted. Each study is checked again inside its own
    transaction (it may have been opened since it was measured); the objects go after the commit.
    Returns the studies evicted (or, with ``dry_run``, those that would be), as measured.
    """
    if budget_bytes < 0:
        raise ValueError(f"the budget must be 0 (unbounded) or a number of bytes, not {budget_bytes}")
    if budget_bytes == 0:
        return []
    report = store_report()
    remaining = report.total_bytes
    evicted: list[StudyUsage] = []
    for usage in sorted((u for u in report.studies if u.evictable), key=_eviction_order):
        if remaining <= budget_bytes:
            break
        if dry_run or _study_evict(usage, actor=actor):
            evicted.append(usage)
            remaining -= usage.bytes
    return evicted


def _study_evict(usage: StudyUsage, *, actor: str) -> bool:
    """Delete one study's rows, audited, and after the commit its objects; False if it must stay now."""
    try:
        with transaction.atomic(using=CLINICAL):
            study = (Study.objects.using(CLINICAL).select_for_update().select_related("patient")
                     .filter(study_instance_uid=usage.study_instance_uid).first())
            if study is None or _kept_because([study])[study.pk][1]:
                return False
            instances = Instance.objects.using(CLINICAL).filter(series__study=study)
            object_ids = set(instances.values_list("object_id", flat=True))
            for series_uid, volume in (Series.objects.using(CLINICAL).filter(study=study)
                                       .values_list("series_instance_uid", "volume_object")):
                object_ids |= {volume, volume_object_id(series_uid)} - {""}
            instances.delete()
            Series.objects.using(CLINICAL).filter(study=study).delete()
            Retrieval.objects.using(CLINICAL).filter(study_instance_uid=study.study_instance_uid,
                                                     state__in=FINISHED).delete()
            study.delete()
            audit_record(actor=actor, action=Action.STORE_EVICT, outcome=Outcome.SUCCESS,
                         patient_pseudonym=study.patient.pseudonym, study=study.study_instance_uid,
                         details={"bytes": usage.bytes,
                                  "last_opened_at": (study.last_opened_at.isoformat()
                                                     if study.last_opened_at else None)})
            transaction.on_commit(lambda: _objects_delete(object_ids), using=CLINICAL)
    except ProtectedError as error:
        log.warning("study %s kept: still referenced (%s)", usage.study_instance_uid, error)
        return False
    return True


def _objects_delete(object_ids: Iterable[str]) -> None:
    for object_id in object_ids:
        storage.object_delete(object_id)


def _unreferenced(object_ids: list[str]) -> set[str]:
    """Those of ``object_ids`` that no instance and no series names."""
    named: set[str] = set()
    for start in range(0, len(object_ids), _CHUNK):
        chunk = object_ids[start:start + _CHUNK]
        named.update(Instance.objects.using(CLINICAL).filter(object_id__in=chunk)
                     .values_list("object_id", flat=True))
        named.update(Series.objects.using(CLINICAL).filter(volume_object__in=chunk)
                     .values_list("volume_object", flat=True))
    return set(object_ids) - named


def _older_than(object_id: str, cutoff: float) -> bool:
    try:
        return storage.object_path(object_id).stat().st_mtime <= cutoff
    except FileNotFoundError:
        return False


def store_orphans(*, older_than_s: float = 86400) -> list[str]:
    """Objects no row names, older than ``older_than_s``: left by an interrupted ingest or eviction.

    Only instance objects (``dcm-`` + SHA-256 of the SOP Instance UID) and volume objects (``vol-`` +
    SHA-256 of the Series Instance UID) are candidates: every reference to them is a column
    (``Instance.object_id``, ``Series.volume_object``). Other kinds (a segmentation model's label map
    and probabilities, named only inside a segmentation edit's JSON) are never called orphans. The
    age spares an object whose ingest has written it and not yet committed its row; the files are
    listed before the rows are read, so a row committed meanwhile is seen.
    """
    if older_than_s < 0:
        raise ValueError("the age must not be negative")
    cutoff = time.time() - older_than_s
    old = [object_id for object_id in storage.storage_objects()
           if COLLECTABLE_OBJECT.match(object_id) and _older_than(object_id, cutoff)]
    return sorted(_unreferenced(old))


def store_collect(*, older_than_s: float, dry_run: bool) -> int:
    """Delete orphan objects (:func:`store_orphans`) and temporary files of killed writers.

    Returns how many orphans were deleted (with ``dry_run``: would be; nothing is touched). Each is
    checked again (still old, still unnamed) just before it goes, so an instance ingested again
    meanwhile is kept.
    """
    orphans = store_orphans(older_than_s=older_than_s)
    if dry_run:
        return len(orphans)
    cutoff = time.time() - older_than_s
    removed = 0
    for start in range(0, len(orphans), _CHUNK):
        for object_id in sorted(_unreferenced(orphans[start:start + _CHUNK])):
            if _older_than(object_id, cutoff):
                storage.object_delete(object_id)
                removed += 1
    swept = storage.storage_sweep()
    if swept:
        log.info("removed %d temporary file(s) of killed writers", swept)
    return removed
