"""The bounded local store: sizes measured on disk, eviction to a budget, orphans collected."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from gateway.audit.models import AuditEvent
from imaging import storage
from imaging.identity.models import StudyIdentity, UIDMap
from imaging.models import (
    DicomDestination,
    Finding,
    Instance,
    JobState,
    PacsSend,
    Report,
    Retrieval,
    Series,
    Study,
)
from imaging.phantom import phantom_write
from imaging.services import IngestBatch, object_id_for
from imaging.store_budget import store_collect, store_evict, store_orphans, store_report
from imaging.volumes import volume_object_id

pytestmark = pytest.mark.django_db(databases=["default", "identity", "audit"], transaction=True)

DAY = 86400


@pytest.fixture(scope="module")
def three_patients(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store-budget-phantom")
    phantom_write(out_dir=out, slices=32, patients=3, seed=23)
    return out


@pytest.fixture
def studies(store: Path, three_patients: Path) -> Iterator[list[Study]]:
    """Three studies (one per patient), ingested through the import door, volumes built."""
    from rendering import pool as pool_module

    pool_module.render_pool_stop()
    batch = IngestBatch(actor="cli:test", door="import")
    for path in sorted(three_patients.rglob("*.dcm")):
        batch.ingest(path.read_bytes())
    batch.close()
    yield list(Study.objects.select_related("patient").order_by("created_at", "id"))
    pool_module.render_pool_stop()


def _disk_total(root: Path) -> int:
    return sum(os.stat(os.path.join(directory, name)).st_size
               for directory, _, names in os.walk(root) for name in names)


def _files_of(study: Study) -> list[Path]:
    """Every object file the study's rows name (instances and built volumes)."""
    instances = Instance.objects.filter(series__study=study)
    paths = [storage.object_path(object_id) for object_id in instances.values_list("object_id", flat=True)]
    paths += [storage.object_path(volume)
              for volume in Series.objects.filter(study=study).exclude(volume_object="")
              .values_list("volume_object", flat=True)]
    return paths


def _bytes_of(study: Study) -> int:
    return sum(os.stat(path).st_size for path in _files_of(study))


def _retrieved(study: Study, *, state: str = JobState.DONE, series: list[str] | None = None) -> Retrieval:
    """A retrieval of ``study`` as the PACS worker leaves it: the series it listed and brought."""
    source, _ = DicomDestination.objects.get_or_create(
        name="PACS", defaults={"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242, "retrieve": "c-get",
                               "registered_by": "test"})
    uids = series if series is not None else list(
        Series.objects.filter(study=study).values_list("series_instance_uid", flat=True))
    return Retrieval.objects.create(
        source=source, remote_study=study.pk, study_instance_uid=study.study_instance_uid,
        pseudonym=study.patient.pseudonym, method="c-get", state=state, requested_by="test",
        series=[{"uid": uid, "modality": "", "description": "", "expected": 1, "received": 1,
                 "complete": True} for uid in uids])


def _opened(study: Study, at) -> None:
    Study.objects.filter(pk=study.pk).update(last_opened_at=at)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


def _rows() -> tuple[int, int, int, int]:
    return (Study.objects.count(), Series.objects.count(), Instance.objects.count(),
            Retrieval.objects.count())


def test_report_measures_each_study_and_the_whole_store_on_disk(studies, store):
    first, second, third = studies
    _retrieved(first)
    _retrieved(second)
    opened = timezone.now() - timedelta(days=3)
    _opened(second, opened)
    assert Series.objects.exclude(volume_object="").exists(), "volumes were built: their bytes count"

    report = store_report()

    by_uid = {usage.study_instance_uid: usage for usage in report.studies}
    assert report.study_count == 3 and set(by_uid) == {s.study_instance_uid for s in studies}
    assert report.total_bytes == _disk_total(store)
    for study in studies:
        usage = by_uid[study.study_instance_uid]
        assert usage.bytes == _bytes_of(study)
        assert usage.instances == Instance.objects.filter(series__study=study).count()
    assert report.other_bytes == _disk_total(store) - sum(_bytes_of(s) for s in studies) == 0
    assert [by_uid[s.study_instance_uid].retrieved for s in studies] == [True, True, False]
    assert by_uid[second.study_instance_uid].last_opened_at == opened
    assert by_uid[first.study_instance_uid].evictable and by_uid[second.study_instance_uid].evictable
    assert not by_uid[third.study_instance_uid].evictable
    assert by_uid[third.study_instance_uid].kept_because == "not retrieved from a PACS"

    out = io.StringIO()
    call_command("store", "report", stdout=out)
    text = out.getvalue()
    for study in studies:
        assert study.study_instance_uid in text
    assert f"({_disk_total(store)} bytes)" in text and "3 studies" in text and "budget unbounded" in text
    assert "no: not retrieved from a PACS" in text


def test_evict_least_recently_opened_first_until_under_budget(studies, store):
    never, long_ago, lately = studies
    for study in studies:
        _retrieved(study)
    _opened(long_ago, timezone.now() - timedelta(days=5))
    _opened(lately, timezone.now() - timedelta(days=2))
    sizes = {study.study_instance_uid: _bytes_of(study) for study in studies}
    files = {study.study_instance_uid: _files_of(study) for study in studies}
    total = _disk_total(store)
    budget = total - sizes[never.study_instance_uid] - 1  # the never-opened study alone is not enough
    uid_maps, identities = UIDMap.objects.count(), StudyIdentity.objects.count()

    before, rows = _snapshot(store), _rows()
    would = store_evict(budget_bytes=budget, dry_run=True, actor="cli:test")
    assert [u.study_instance_uid for u in would] == [never.study_instance_uid, long_ago.study_instance_uid]
    out = io.StringIO()
    call_command("store", "evict", "--budget", str(budget), "--dry-run", stdout=out)
    assert f"would evict {never.study_instance_uid}" in out.getvalue()
    assert lately.study_instance_uid not in out.getvalue()
    assert _snapshot(store) == before and _rows() == rows
    assert not AuditEvent.objects.filter(action="store.evict").exists()

    out = io.StringIO()
    call_command("store", "evict", "--budget", str(budget), "--operator", "ops", stdout=out)

    said = out.getvalue()
    assert f"evicted {never.study_instance_uid}" in said and f"evicted {long_ago.study_instance_uid}" in said
    assert "evicted 2 studies" in said
    assert _disk_total(store) <= budget
    assert _disk_total(store) == total - sizes[never.study_instance_uid] - sizes[long_ago.study_instance_uid]
    for gone in (never, long_ago):
        assert not any(path.exists() for path in files[gone.study_instance_uid])
        assert not Study.objects.filter(study_instance_uid=gone.study_instance_uid).exists()
        assert not Retrieval.objects.filter(study_instance_uid=gone.study_instance_uid).exists()
    assert list(Study.objects.values_list("study_instance_uid", flat=True)) == [lately.study_instance_uid]
    assert Series.objects.exclude(study=lately).count() == 0 and Instance.objects.exclude(
        series__study=lately).count() == 0
    assert all(path.exists() for path in files[lately.study_instance_uid])
    kept = Instance.objects.filter(series__study=lately).first()
    stored = pydicom.dcmread(io.BytesIO(storage.object_get(kept.object_id)))
    assert stored.SOPInstanceUID == kept.sop_instance_uid
    assert (UIDMap.objects.count(), StudyIdentity.objects.count()) == (uid_maps, identities)

    events = {e.study: e for e in AuditEvent.objects.filter(action="store.evict")}
    assert set(events) == {never.study_instance_uid, long_ago.study_instance_uid}
    assert events[never.study_instance_uid].actor == "cli:ops"
    assert events[never.study_instance_uid].patient_pseudonym == never.patient.pseudonym
    assert json.loads(events[never.study_instance_uid].details) == {
        "bytes": sizes[never.study_instance_uid], "last_opened_at": None}
    long_ago_details = json.loads(events[long_ago.study_instance_uid].details)
    assert long_ago_details["bytes"] == sizes[long_ago.study_instance_uid]
    assert long_ago_details["last_opened_at"].startswith(str((timezone.now() - timedelta(days=5)).date()))


def test_open_pushed_and_worked_on_studies_are_kept_even_over_budget(studies, store):
    open_now, pushed, worked_on = studies
    _retrieved(open_now)
    _retrieved(worked_on)
    _opened(open_now, timezone.now())
    week_ago = timezone.now() - timedelta(days=7)
    _opened(worked_on, week_ago)
    series_uid = Series.objects.filter(study=worked_on).values_list("series_instance_uid", flat=True)[0]
    finding = Finding.objects.create(study=worked_on, series_instance_uid=series_uid, label="lesion",
                                     tool="line", points=[], plane=None, result={}, author="doctor")
    before, rows = _snapshot(store), _rows()

    assert store_evict(budget_bytes=0, dry_run=False, actor="cli:test") == []  # 0: unbounded
    assert store_evict(budget_bytes=1, dry_run=False, actor="cli:test") == []
    assert _snapshot(store) == before and _rows() == rows and _disk_total(store) > 1
    reasons = {u.study_instance_uid: u.kept_because for u in store_report().studies}
    assert reasons[open_now.study_instance_uid] == "opened within 12 h"
    assert reasons[pushed.study_instance_uid] == "not retrieved from a PACS"
    assert reasons[worked_on.study_instance_uid] == "holds findings"

    finding.delete()
    report = Report.objects.create(study=worked_on, author="doctor")
    assert {u.study_instance_uid: u.kept_because for u in store_report().studies}[
        worked_on.study_instance_uid] == "holds report"
    report.delete()
    arriving = _retrieved(worked_on, state=JobState.RUNNING)
    assert {u.study_instance_uid: u.kept_because for u in store_report().studies}[
        worked_on.study_instance_uid] == "a retrieval is in progress"
    arriving.delete()
    sending = PacsSend.objects.create(destination=DicomDestination.objects.get(), sop_instance_uid="2.25.1",
                                      study_instance_uid=worked_on.study_instance_uid, modality="SR",
                                      next_attempt_at=timezone.now())
    assert {u.study_instance_uid: u.kept_because for u in store_report().studies}[
        worked_on.study_instance_uid] == "a result is being sent to the PACS"
    sending.delete()
    partial = Retrieval.objects.get(study_instance_uid=worked_on.study_instance_uid)
    partial.series = partial.series[1:]
    partial.save()
    assert {u.study_instance_uid: u.kept_because for u in store_report().studies}[
        worked_on.study_instance_uid] == "holds series no retrieval brought (pushed or made here)"
    _retrieved(worked_on)
    assert store_evict(budget_bytes=1, dry_run=True, actor="cli:test")[0].study_instance_uid == (
        worked_on.study_instance_uid)
    assert _snapshot(store) == before

    evicted = store_evict(budget_bytes=1, dry_run=False, actor="cli:test")

    assert [u.study_instance_uid for u in evicted] == [worked_on.study_instance_uid]
    assert _disk_total(store) == _bytes_of(open_now) + _bytes_of(pushed) > 1  # still over: the rest stays
    assert set(Study.objects.values_list("pk", flat=True)) == {open_now.pk, pushed.pk}
    assert AuditEvent.objects.filter(action="store.evict").count() == 1


def test_collect_removes_only_old_unreferenced_instance_and_volume_objects(studies, store):
    two_days_ago = time.time() - 2 * DAY
    referenced = Instance.objects.values_list("object_id", flat=True)[0]
    os.utime(storage.object_path(referenced), (two_days_ago, two_days_ago))
    old_instance, old_volume = object_id_for("1.2.826.0.1.999.1"), volume_object_id("1.2.826.0.1.999.2")
    young_instance = object_id_for("1.2.826.0.1.999.3")
    model_labels = "segmodel-" + "ab" * 16  # a model's label map, named only in a segmentation edit's JSON
    for object_id in (old_instance, old_volume, young_instance, model_labels):
        storage.object_put(object_id, b"left behind")
    for object_id in (old_instance, old_volume, model_labels):
        os.utime(storage.object_path(object_id), (two_days_ago, two_days_ago))
    temp = storage.object_path(old_instance).parent / f"{storage.TEMP_PREFIX}{old_instance}-dead"
    temp.write_bytes(b"half")
    os.utime(temp, (two_days_ago, two_days_ago))
    everything = _snapshot(store)

    assert store_orphans(older_than_s=DAY) == sorted([old_instance, old_volume])
    assert store_collect(older_than_s=DAY, dry_run=True) == 2
    assert _snapshot(store) == everything
    with pytest.raises(CommandError, match="at least 60"):
        call_command("store", "collect", "--older-than", "5")
    with pytest.raises(CommandError, match="must be 0 or more"):
        call_command("store", "evict", "--budget", "-3")

    out = io.StringIO()
    call_command("store", "collect", "--older-than", str(DAY), stdout=out)

    assert "removed 2 orphan object(s)" in out.getvalue()
    assert not storage.object_path(old_instance).exists() and not storage.object_path(old_volume).exists()
    assert not temp.exists()
    for object_id in (referenced, young_instance, model_labels):
        assert storage.object_path(object_id).exists()
    assert set(_snapshot(store)) == set(everything) - {str(storage.object_path(old_instance)),
                                                       str(storage.object_path(old_volume)), str(temp)}
    assert store_orphans(older_than_s=0) == [young_instance]
