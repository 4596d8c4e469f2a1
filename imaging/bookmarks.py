"""Reading bookmarks: a reader's whole reading state of a study, kept under a name, each write one
transaction.

A bookmark is a viewing preference of one account (like a hanging rule), so saving, replacing and
deleting one are not audited. Its owner may show it to a consultant's share; that gives someone
outside the hospital something new to see, so sharing and unsharing are audited
(``bookmark.share``, ``bookmark.unshare``).

Sharing never widens a share: a bookmark goes only to a live share that its owner issued (a root
share or one forwarded from it) and that covers the bookmark's study (a patient-wide share covers
every study of its patient, a study share only that study). A consultant sees the bookmarks shared
with the share it redeemed or any share it was forwarded from, only while every share of its chain
is still live (read again here: a principal made before a revocation must not outlive it), and
only for a study its own token grants (``gateway.policy.may``).

A bookmark that does not exist and one that is not the asker's get the same answer,
:class:`BookmarkNotFound`.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import User
from accounts.services import account_of
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.i18n import gettext_noop
from gateway.policy import Permission, may
from gateway.sharing.models import LIVE_STATES, Share
from gateway.sharing.principal import ConsultantPrincipal
from gateway.sharing.selectors import shares_live
from imaging.access import StudyNotFound
from imaging.models import ReadingBookmark, ReadingBookmarkShare, Study
from rendering.said import Said, SaidError

NAME_LENGTH = 64
STATE_MOST_BYTES = 64 * 1024
BOOKMARKS_PER_STUDY = 20


class BookmarkError(SaidError, ValueError):
    """A bookmark that cannot be kept or shared; the message says why (said to the reader)."""


class BookmarkNotFound(LookupError):
    """No such bookmark for this principal (the same answer whether it is missing or someone else's)."""


@dataclass(frozen=True)
class SavedBookmark:
    id: int
    name: str
    study_uid: str
    state: dict[str, Any]
    updated_at: dt.datetime
    shared_with: tuple[str, ...]
    """Public ids of the live shares it is shown to; empty when listed for a consultant."""

    def wire(self) -> dict[str, Any]:
        """What a bookmark menu lists (JSON-able); the state is fetched on its own when restored."""
        return {"id": self.id, "name": self.name, "updated_at": self.updated_at.isoformat(),
                "shared_with": list(self.shared_with)}


def bookmark_name_clean(*, name: Any) -> str:
    """A bookmark's name as shown in the menu: trimmed, 1 to 64 printable characters."""
    clean = name.strip() if isinstance(name, str) else ""
    if not 0 < len(clean) <= NAME_LENGTH or not clean.isprintable():
        raise BookmarkError(gettext_noop("%(where)s must be 1 to %(most)s printable characters"),
                            where=Said(gettext_noop("the name")), most=NAME_LENGTH)
    return clean


def bookmark_state_clean(*, state: Any) -> dict[str, Any]:
    """The state as plain JSON data: an object whose compact JSON is at most 64 KiB."""
    text = None
    if isinstance(state, dict):
        try:
            text = json.dumps(state, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            text = None
    if text is None or len(text.encode()) > STATE_MOST_BYTES:
        raise BookmarkError(gettext_noop("a bookmark's state must be a JSON object of at most "
                                         "%(most)s KiB"), most=STATE_MOST_BYTES // 1024)
    return json.loads(text)


def _live_chain(principal: ConsultantPrincipal) -> list[int]:
    """The pks of the consultant's share chain, or none when any share of it has ended since."""
    pks = [link.pk for link in principal.chain]
    live = shares_live(Share.objects.filter(pk__in=pks)).count()
    return pks if pks and live == len(pks) else []


def _visible(principal: Any) -> QuerySet[ReadingBookmark]:
    """The bookmarks ``principal`` may see, before the per-study check of the policy."""
    reader = account_of(principal)
    if reader is not None:
        return ReadingBookmark.objects.filter(owner_id=reader.pk)
    if isinstance(principal, ConsultantPrincipal):
        return ReadingBookmark.objects.filter(shared__share_id__in=_live_chain(principal)).distinct()
    return ReadingBookmark.objects.none()


def _shared_with(bookmark_ids: list[int]) -> dict[int, tuple[str, ...]]:
    links = (ReadingBookmarkShare.objects
             .filter(bookmark_id__in=bookmark_ids, share__state__in=LIVE_STATES,
                     share__expires_at__gt=timezone.now())
             .order_by("created_at", "id").values_list("bookmark_id", "share__public_id"))
    found: dict[int, tuple[str, ...]] = {}
    for bookmark_id, public_id in links:
        found[bookmark_id] = (*found.get(bookmark_id, ()), public_id)
    return found


def _saved(rows: list[ReadingBookmark], *, owner: bool) -> list[SavedBookmark]:
    shared = _shared_with([row.pk for row in rows]) if owner else {}
    return [SavedBookmark(id=row.pk, name=row.name, study_uid=row.study.study_instance_uid,
                          state=row.state, updated_at=row.updated_at,
                          shared_with=shared.get(row.pk, ())) for row in rows]


def bookmarks_of(*, principal: Any, study_uid: str) -> list[SavedBookmark]:
    """The bookmarks of one study ``principal`` may restore, newest first.

    A user: their own. A consultant: those shared with its share or one it was forwarded from,
    while its chain is live and its token grants the study. Anyone else, or a study they may not
    view (or that does not exist): none.
    """
    if not may(principal, Permission.STUDY_VIEW, study_uid):
        return []
    rows = list(_visible(principal).filter(study__study_instance_uid=study_uid)
                .select_related("study").order_by("-updated_at", "-id"))
    return _saved(rows, owner=account_of(principal) is not None)


def bookmark_get(*, principal: Any, bookmark_id: int) -> SavedBookmark:
    """One bookmark, state included, under the same rules as :func:`bookmarks_of`."""
    row = _visible(principal).filter(pk=bookmark_id).select_related("study").first()
    if row is None or not may(principal, Permission.STUDY_VIEW, row.study.study_instance_uid):
        raise BookmarkNotFound(bookmark_id)
    return _saved([row], owner=account_of(principal) is not None)[0]


def _study_to_keep(user: Any, study_uid: str) -> Study:
    """The study a user keeps a bookmark of: one they may view, else :class:`StudyNotFound`."""
    if account_of(user) is None or not may(user, Permission.STUDY_VIEW, study_uid):
        raise StudyNotFound(study_uid)
    study = Study.objects.filter(study_instance_uid=study_uid).first()
    if study is None:
        raise StudyNotFound(study_uid)
    return study


def bookmark_save(*, user: User, study_uid: str, name: Any, state: Any) -> SavedBookmark:
    """Keep ``state`` under ``name`` for this study; an existing name's state is replaced.

    At most :data:`BOOKMARKS_PER_STUDY` per user and study (a replacement does not count as new).
    Raises :class:`BookmarkError` for a bad name, state or a full menu, and
    :class:`~imaging.access.StudyNotFound` for a study the user may not view.
    """
    clean_name = bookmark_name_clean(name=name)
    clean_state = bookmark_state_clean(state=state)
    study = _study_to_keep(user, study_uid)
    with transaction.atomic():
        # The account's row is the lock: two saves at once cannot both pass the count.
        User.objects.select_for_update().filter(pk=user.pk).exists()
        now = timezone.now()
        mine = ReadingBookmark.objects.filter(owner_id=user.pk, study=study)
        row = mine.filter(name=clean_name).first()
        if row is not None:
            row.state, row.updated_at = clean_state, now
            row.save(update_fields=["state", "updated_at"])
        elif mine.count() >= BOOKMARKS_PER_STUDY:
            raise BookmarkError(gettext_noop("at most %(most)s bookmarks per study: delete one first"),
                                most=BOOKMARKS_PER_STUDY)
        else:
            row = ReadingBookmark.objects.create(owner_id=user.pk, study=study, name=clean_name,
                                                 state=clean_state, created_at=now, updated_at=now)
    return _saved([row], owner=True)[0]


@transaction.atomic
def bookmark_delete(*, user: User, bookmark_id: int) -> None:
    """Delete one of the user's bookmarks (and its sharing: no consultant sees it any more)."""
    owner = account_of(user)
    deleted = 0
    if owner is not None:
        deleted, _ = ReadingBookmark.objects.filter(owner_id=owner.pk, pk=bookmark_id).delete()
    if not deleted:
        raise BookmarkNotFound(bookmark_id)


def _own_bookmark(user: Any, bookmark_id: int) -> ReadingBookmark:
    owner = account_of(user)
    row = None
    if owner is not None:
        row = (ReadingBookmark.objects.select_for_update(of=("self",))
               .select_related("study__patient").filter(owner_id=owner.pk, pk=bookmark_id).first())
    if row is None:
        raise BookmarkNotFound(bookmark_id)
    return row


def _share_to_show(user: User, share_public_id: str, study: Study) -> Share:
    """The share a bookmark of ``study`` may go to, or :class:`BookmarkError` saying why not."""
    share = None
    if may(user, Permission.STUDY_SHARE, study.study_instance_uid):
        share = (Share.objects.select_for_update()
                 .filter(public_id=str(share_public_id), issued_by_id=user.pk).first())
    if share is None:  # missing or someone else's: the same answer
        raise BookmarkError(gettext_noop("that share is not one of yours"))
    if share.state not in LIVE_STATES or share.expires_at <= timezone.now():
        raise BookmarkError(gettext_noop("This share has ended"))
    if share.patient_id != study.patient_id or share.study_id not in (None, study.pk):
        raise BookmarkError(gettext_noop("that study is not part of this share"))
    return share


def _audit_sharing(action: Action, *, user: User, bookmark: ReadingBookmark, share_public_id: str,
                   source_ip: str | None) -> None:
    # The bookmark's name is the doctor's free text: it stays out of the audit details.
    audit_record(actor=user, action=action, outcome=Outcome.SUCCESS,
                 patient_pseudonym=bookmark.study.patient.pseudonym,
                 study=bookmark.study.study_instance_uid, source_ip=source_ip,
                 details={"bookmark": bookmark.pk, "share": share_public_id})


def bookmark_share(*, user: User, bookmark_id: int, share_public_id: str,
                   source_ip: str | None = None) -> SavedBookmark:
    """Show one of the user's bookmarks to the holders of a share they issued (audited).

    Refused with :class:`BookmarkError` unless the share is the user's, live, and covers the
    bookmark's study. Sharing it again with the same share changes nothing and records nothing.
    """
    with transaction.atomic():
        bookmark = _own_bookmark(user, bookmark_id)
        share = _share_to_show(user, share_public_id, bookmark.study)
        _, created = ReadingBookmarkShare.objects.get_or_create(bookmark=bookmark, share=share)
        if created:
            _audit_sharing(Action.BOOKMARK_SHARE, user=user, bookmark=bookmark,
                           share_public_id=share.public_id, source_ip=source_ip)
    return _saved([bookmark], owner=True)[0]


def bookmark_unshare(*, user: User, bookmark_id: int, share_public_id: str,
                     source_ip: str | None = None) -> SavedBookmark:
    """Stop showing one of the user's bookmarks to a share (audited when it was shown to it).

    Always allowed, whatever the share's state: it only narrows what the share sees.
    """
    with transaction.atomic():
        bookmark = _own_bookmark(user, bookmark_id)
        removed, _ = ReadingBookmarkShare.objects.filter(
            bookmark=bookmark, share__public_id=str(share_public_id)).delete()
        if removed:
            _audit_sharing(Action.BOOKMARK_UNSHARE, user=user, bookmark=bookmark,
                           share_public_id=str(share_public_id), source_ip=source_ip)
    return _saved([bookmark], owner=True)[0]


def shares_for_bookmarks(*, user: User, study_uid: str) -> list[dict[str, str]]:
    """The shares a doctor may show a bookmark of this study to (the "share with…" menu).

    Their own live shares, root or forwarded, whose scope covers the study, newest first.
    """
    if account_of(user) is None or not may(user, Permission.STUDY_SHARE, study_uid):
        return []
    study = Study.objects.filter(study_instance_uid=study_uid).first()
    if study is None:
        return []
    shares = shares_live(Share.objects.filter(issued_by_id=user.pk, patient_id=study.patient_id)
                         .filter(Q(study__isnull=True) | Q(study_id=study.pk)))
    return [{"id": share.public_id, "recipient": share.recipient,
             "expires_at": share.expires_at.isoformat()}
            for share in shares.order_by("-created_at", "-id")]
