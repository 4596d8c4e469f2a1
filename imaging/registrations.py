"""Registrations between series: proposed by a worker, a doctor's landmarks or nudges, accepted or
rejected by a doctor, and the chains that let the viewer fuse any two frames they connect.

A registration's matrix takes the moving series' patient mm into the fixed series' frame (the
render engine's ``Layer.registration`` for a moving layer over a fixed base). The viewer fuses
two frames of reference when accepted registrations (or REG objects that came with the study)
connect them, in either direction and through intermediate frames (A→B and B→C fuse A on C).

Two series of one frame of reference (a PET/CT whose PET moved with the patient's breathing)
are registered too: such a registration is a *series-level* link (``FrameLink.series``, the
moving series). It is no link between frames: it corrects that one series only, wherever it is
drawn (over a base of its frame, or through the frame's links over another frame), and leaves
every other series of the frame as it is (:func:`layer_transform`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from django.db import transaction
from django.utils import timezone

from gateway.i18n import gettext_noop
from imaging.models import Registration, RegistrationState, Study
from rendering.said import SaidError

CLINICAL = "default"
METHODS = ("rigid", "affine", "landmarks", "manual", "incoming")
IDENTITY = tuple(float(v) for v in np.eye(4).ravel())


class RegistrationStoreError(SaidError, ValueError):
    """A registration that cannot be recorded or decided (not found, not yours, already decided)."""


@dataclass(frozen=True)
class FrameLink:
    """A known transform from one frame of reference's patient mm into another's."""

    source: str
    target: str
    matrix: np.ndarray
    series: str = ""
    """Empty for a link between frames; else the one series (of ``source`` = ``target``) that
    ``matrix`` corrects: its patient mm -> its frame's true patient mm."""


def matrix_checked(values: Sequence[float]) -> list[float]:
    """16 finite numbers forming an invertible transform whose last row is (0, 0, 0, 1)."""
    if len(values) != 16 or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise RegistrationStoreError(gettext_noop("a registration matrix is 16 finite numbers"))
    matrix = np.asarray(values, dtype=np.float64).reshape(4, 4)
    if not np.allclose(matrix[3], (0, 0, 0, 1)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-6:
        raise RegistrationStoreError(gettext_noop("a registration matrix must be an invertible affine "
                                                  "transform"))
    return [float(v) for v in matrix.ravel()]


def registration_start(*, study_uid: str, fixed: tuple[str, str], moving: tuple[str, str], method: str,
                       author: str, matrix: Sequence[float] | None = None,
                       landmarks: list | None = None, error_mm: float | None = None) -> Registration:
    """Record a registration being made: running (a worker's job) or proposed (given a matrix)."""
    if method not in METHODS:
        raise RegistrationStoreError(gettext_noop("a registration method is one of %(methods)s"),
                                     methods=", ".join(METHODS))
    if fixed[0] == moving[0]:
        raise RegistrationStoreError(gettext_noop("a series is not registered onto itself"))
    return Registration.objects.create(
        study=Study.objects.get(study_instance_uid=study_uid), fixed_series=fixed[0], fixed_frame=fixed[1],
        moving_series=moving[0], moving_frame=moving[1], method=method, author=author,
        matrix=matrix_checked(matrix) if matrix is not None else None, landmarks=landmarks or [],
        error_mm=error_mm,
        state=RegistrationState.PROPOSED if matrix is not None else RegistrationState.RUNNING)


def registration_progress(registration_id: int, done: int, total: int) -> bool:
    """A worker's progress; True when the reader asked to cancel."""
    Registration.objects.filter(pk=registration_id).update(progress_done=done, progress_total=total)
    return Registration.objects.filter(pk=registration_id, cancel_asked=True).exists()


def registration_found(registration_id: int, *, matrix: Sequence[float],
                       metric: float | None) -> Registration:
    with transaction.atomic(using=CLINICAL):
        found = Registration.objects.select_for_update().get(pk=registration_id)
        if found.state != RegistrationState.RUNNING:
            raise RegistrationStoreError(gettext_noop("registration %(number)s is %(state)s"),
                                         number=registration_id,
                                         state=found.state)
        found.matrix, found.metric, found.state = matrix_checked(matrix), metric, RegistrationState.PROPOSED
        found.save()
    return found


def registration_ended(registration_id: int, *, state: str, reason: str) -> None:
    """A running job that failed or was cancelled."""
    Registration.objects.filter(pk=registration_id, state=RegistrationState.RUNNING).update(
        state=state, reason=reason[:500])


def registration_cancel(registration_id: int, *, author: str) -> None:
    asked = Registration.objects.filter(pk=registration_id, author=author,
                                        state=RegistrationState.RUNNING).update(cancel_asked=True)
    if not asked:
        raise RegistrationStoreError(gettext_noop("no running registration of yours to cancel"))


def registration_nudged(registration_id: int, *, author: str, matrix: Sequence[float]) -> Registration:
    """The doctor moved the proposal by hand: it stays a proposal, now marked manual."""
    with transaction.atomic(using=CLINICAL):
        found = _own_proposal(registration_id, author)
        found.matrix = matrix_checked(matrix)
        if found.method not in ("manual",):
            found.method = "manual"
        found.save()
    return found


def _own_proposal(registration_id: int, author: str) -> Registration:
    found = Registration.objects.select_for_update().filter(pk=registration_id).first()
    if found is None or found.author != author:
        raise RegistrationStoreError(gettext_noop("no such registration of yours"))
    if found.state != RegistrationState.PROPOSED:
        raise RegistrationStoreError(gettext_noop("this registration is %(state)s, not a proposal"),
                                     state=found.state)
    return found


def registration_decide(registration_id: int, *, author: str, accept: bool,
                        reg_series: str = "") -> Registration:
    with transaction.atomic(using=CLINICAL):
        found = _own_proposal(registration_id, author)
        found.state = RegistrationState.ACCEPTED if accept else RegistrationState.REJECTED
        found.decided_by, found.decided_at, found.reg_series = author, timezone.now(), reg_series
        found.save()
    return found


def registration_get(registration_id: int, study_uids: Iterable[str]) -> Registration:
    found = Registration.objects.filter(pk=registration_id,
                                        study__study_instance_uid__in=list(study_uids)).first()
    if found is None:
        raise RegistrationStoreError(gettext_noop("no such registration in this reading"))
    return found


def accepted_links(study_uids: Iterable[str]) -> list[FrameLink]:
    """Every accepted registration of these studies, as links between frames of reference."""
    return [FrameLink(r.moving_frame, r.fixed_frame, np.asarray(r.matrix, dtype=np.float64).reshape(4, 4),
                      series=r.moving_series if r.moving_frame == r.fixed_frame else "")
            for r in Registration.objects.filter(study__study_instance_uid__in=list(study_uids),
                                                 state=RegistrationState.ACCEPTED)
            if r.matrix]


def frame_transform(links: Iterable[FrameLink], source: str, target: str) -> np.ndarray | None:
    """The transform from ``source``'s patient mm into ``target``'s through ``links`` (either
    direction, any number of steps; the shortest chain), or None when nothing connects them."""
    if source == target:
        return np.eye(4)
    graph: dict[str, list[tuple[str, np.ndarray]]] = {}
    for link in links:
        if link.series:
            continue
        graph.setdefault(link.source, []).append((link.target, link.matrix))
        graph.setdefault(link.target, []).append((link.source, np.linalg.inv(link.matrix)))
    reached = {source: np.eye(4)}
    queue = deque([source])
    while queue:
        frame = queue.popleft()
        for neighbour, step in graph.get(frame, []):
            if neighbour not in reached:
                reached[neighbour] = step @ reached[frame]
                queue.append(neighbour)
    return reached.get(target)


def series_correction(links: Iterable[FrameLink], series: str) -> np.ndarray | None:
    """The series-level registration of ``series`` (the last of ``links`` that names it), or None."""
    found = None
    for link in links:
        if link.series and link.series == series:
            found = link.matrix
    return found


def layer_transform(links: Sequence[FrameLink], *, series: str, frame: str, base_series: str,
                    base_frame: str) -> np.ndarray | None:
    """The transform from ``series``' patient mm (frame ``frame``) into the base series' drawn mm:
    the base's series-level correction undone, after the frames' chain, after the series' own
    correction. None when no link is needed (same frame, neither corrected) or none connects."""
    between = frame_transform(links, frame, base_frame)
    if between is None:
        return None
    own, base = series_correction(links, series), series_correction(links, base_series)
    if frame == base_frame and own is None and base is None:
        return None
    transform = between if own is None else between @ own
    return transform if base is None else np.linalg.inv(base) @ transform


def registration_wire(registration: Registration) -> dict:
    return {"id": registration.id, "fixed": registration.fixed_series, "moving": registration.moving_series,
            "method": registration.method, "state": registration.state, "matrix": registration.matrix,
            "metric": registration.metric, "error_mm": registration.error_mm,
            "done": registration.progress_done, "total": registration.progress_total,
            "reason": registration.reason, "by": registration.author,
            "reg_series": registration.reg_series}


def registrations_of(study_uids: Iterable[str]) -> list[Registration]:
    return list(Registration.objects.filter(study__study_instance_uid__in=list(study_uids))
                .exclude(state__in=(RegistrationState.REJECTED, RegistrationState.CANCELLED,
                                    RegistrationState.FAILED)))
