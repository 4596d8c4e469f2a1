"""What the viewer consumer gives the mixins that handle parts of a reading (segmentation,
registration, derived series), and the one check of a reporting act they share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async

from gateway.policy import Permission, may
from rendering.session import SessionError

if TYPE_CHECKING:
    from gateway.audit.catalogue import Action, Outcome
    from imaging.access import ViewerStudy
    from rendering.session import ViewerSession


class ReadingHost:
    """Mixed into the viewer consumer: the attributes and methods below are the consumer's."""

    if TYPE_CHECKING:
        principal: Any
        language: str | None
        study: ViewerStudy
        session: ViewerSession
        pool: Any
        may_measure: bool

        async def send(self, text_data: str | None = None, bytes_data: bytes | None = None,
                       close: bool = False) -> None: ...
        async def _audit(self, action: Action, outcome: Outcome, *, study: str | None = None,
                         details: dict[str, Any] | None = None) -> None: ...
        async def _error(self, code: str, text: str | BaseException, *, view: int | None = None,
                         of: str | None = None) -> None: ...
        async def _send_ready(self) -> None: ...
        def _render(self, views: list[int]) -> None: ...

    async def _may_report(self) -> bool:
        """A reporting act (segmenting, registering, deriving): ``study.report``, never a share."""
        consultant = getattr(self.principal, "is_capability", False) is True
        return not consultant and await database_sync_to_async(may)(
            self.principal, Permission.STUDY_REPORT, self.study.study_uid)

    async def _reporting(self, refusal: str) -> None:
        """Refused with ``refusal`` (a template marked ``gettext_noop``: said to the reader) unless the
        reader may report, asked of the policy per message."""
        if not await self._may_report():
            raise SessionError(refusal)
