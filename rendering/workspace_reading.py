"""The viewer's tabs and grids over the socket (``tab``, ``grid``).

One socket serves every tab of a reading: a tab on screen is rendered, the others
are settings in the session (rendering.workspaces). Showing another tab, or a new
grid, restarts the views as a layout change does: a ``ready`` with the tab's views,
then their frames. A rename, or linking a tab off screen, changes only the tab bar
(a ``tabs`` message).

Bookmarks (``bookmark``) keep the whole reading state (imaging.bookmarks); opening one
restores it through the session, which refuses any series this reading does not show.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async

from accounts.grids import GridError, grid_save, grids_of
from accounts.services import account_of
from gateway.i18n import gettext_noop
from gateway.net import scope_address
from imaging.access import StudyNotFound
from imaging.bookmarks import (
    BookmarkError,
    BookmarkNotFound,
    bookmark_delete,
    bookmark_get,
    bookmark_save,
    bookmark_share,
    bookmark_unshare,
    bookmarks_of,
    shares_for_bookmarks,
)
from rendering import protocol
from rendering.hanging import HangingRuleError
from rendering.session import SessionError


async def tabs_send(consumer: Any) -> None:
    session = consumer.session
    await consumer.send(text_data=json.dumps({"type": "tabs", "tabs": [tab.wire() for tab in session.tabs],
                                              "tab": session.tab}))


async def views_restart(consumer: Any, views: list[int]) -> None:
    await consumer._send_ready()
    consumer._render(views)


async def tab_on(consumer: Any, message: protocol.TabChange) -> None:
    session = consumer.session
    if message.action == "rename":
        session.tab_rename(message.tab, message.name)
        await tabs_send(consumer)
        return
    if message.action == "link":
        views = session.tab_link(message.tab, message.linked)
        await tabs_send(consumer)
        consumer._render(views)
        return
    changes: dict[str, Callable[[], list[int]]] = {
        "add": lambda: session.tab_add(message.layout),
        "duplicate": lambda: session.view_duplicate(message.view),
        "select": lambda: session.tab_select(message.tab),
        "close": lambda: session.tab_close(message.tab),
    }
    await views_restart(consumer, changes[message.action]())


async def swap_on(consumer: Any, message: protocol.Swap) -> None:
    await views_restart(consumer, consumer.session.views_swap(message.view, message.other))


async def grid_on(consumer: Any, message: protocol.GridChange) -> None:
    await views_restart(consumer, consumer.session.grid_apply(message.grid))


def _keeps(consumer: Any) -> bool:
    """A reader with an account keeps bookmarks; a consultant's share only opens those shown to it."""
    return account_of(consumer.principal) is not None


def _bookmarks(consumer: Any) -> dict[str, Any]:
    study = consumer.study.study_uid
    saved = bookmarks_of(principal=consumer.principal, study_uid=study)
    keeps = _keeps(consumer)
    return {"type": "bookmarks", "keeps": keeps, "bookmarks": [bookmark.wire() for bookmark in saved],
            "shares": shares_for_bookmarks(user=consumer.principal, study_uid=study) if keeps else []}


async def bookmarks_send(consumer: Any) -> None:
    await consumer.send(text_data=json.dumps(await database_sync_to_async(_bookmarks)(consumer)))


def _bookmark_change(consumer: Any, message: protocol.BookmarkChange) -> Any:
    """Carry out ``message`` in the database; the state to show for ``open``, else None."""
    principal, study = consumer.principal, consumer.study.study_uid
    if message.action == "open":
        saved = bookmark_get(principal=principal, bookmark_id=message.bookmark)
        if saved.study_uid != study:
            raise BookmarkNotFound(message.bookmark)
        return saved.state
    if not _keeps(consumer):
        raise SessionError(gettext_noop("a consultant's share opens the bookmarks shown to it and keeps "
                                        "none"))
    if message.action == "save":
        bookmark_save(user=principal, study_uid=study, name=message.name,
                      state=consumer.session.reading_snapshot())
    elif message.action == "delete":
        bookmark_delete(user=principal, bookmark_id=message.bookmark)
    else:
        change = bookmark_share if message.shared else bookmark_unshare
        change(user=principal, bookmark_id=message.bookmark, share_public_id=message.share,
               source_ip=scope_address(consumer.scope))
    return None


async def bookmark_on(consumer: Any, message: protocol.BookmarkChange) -> None:
    try:
        state = await database_sync_to_async(_bookmark_change)(consumer, message)
    except (BookmarkNotFound, StudyNotFound) as error:
        raise SessionError(gettext_noop("no such bookmark of this study")) from error
    except BookmarkError as error:
        raise SessionError.from_error(error) from error
    if state is None:
        await bookmarks_send(consumer)
        return
    await views_restart(consumer, consumer.session.reading_restore(state))


def _grids(consumer: Any) -> dict[str, Any]:
    """The reader's own grids then the hospital's; a consultant's share has none."""
    user = account_of(consumer.principal)
    return {"type": "grids", "grids": grids_of(user=user) if user is not None else None}


async def grids_send(consumer: Any) -> None:
    await consumer.send(text_data=json.dumps(await database_sync_to_async(_grids)(consumer)))


async def grid_save_on(consumer: Any, message: protocol.GridSave) -> None:
    user = account_of(consumer.principal)
    if user is None:
        raise SessionError(gettext_noop("a consultant's share keeps no grids"))
    try:
        await database_sync_to_async(grid_save)(user=user, name=message.name, grid=message.grid)
    except (GridError, HangingRuleError) as error:
        raise SessionError.from_error(error) from error
    await grids_send(consumer)


WORKSPACE_HANDLERS: dict[type, Callable[[Any, Any], Awaitable[None]]] = {
    protocol.TabChange: tab_on, protocol.GridChange: grid_on, protocol.BookmarkChange: bookmark_on,
    protocol.Swap: swap_on, protocol.GridSave: grid_save_on,
}
