"""Volume sources built inside worker processes by the pool tests."""

from __future__ import annotations

import dataclasses

from rendering.testing import PhantomSource


class ForeignFrameSource(PhantomSource):
    """The phantom, plus ``foreign-<series>``: the same series in another frame of reference."""

    def load(self, series_id):
        if series_id.startswith("foreign-"):
            volume = super().load(series_id.removeprefix("foreign-"))
            return dataclasses.replace(volume, series_id=series_id, frame_of_reference_uid="1.2.3.4")
        return super().load(series_id)
