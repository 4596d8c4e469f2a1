"""The SUV a reading shows: the normalisation the reader chose and any weight or dose they entered.

Every PET/NM layer of the reading uses it — windows, the value under the cursor and every
measurement — through the layer's ``suv_factor``. SUVbw from the header needs no override;
another method, or an entered value, gives each series its own factor
(:func:`imaging.suv.suv_method_factor`). The patient's sex, which the lean and ideal body
mass formulas need, lives in the identity zone only: the consumer reads it for the session
and it never leaves the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils.translation import gettext

from gateway.i18n import gettext_noop
from imaging.suv import SUV_METHODS, suv_facts, suv_method_factor
from rendering.said import Said, SaidError, said


class SuvReadingError(SaidError, ValueError):
    """A method or an entered value that cannot be used (said to the reader)."""


@dataclass
class SuvReading:
    method: str = "bw"
    sex: str = ""
    entered: dict[str, dict[str, float]] = field(default_factory=dict)
    """Series UID -> the values a reader entered for this reading (``weight_kg``, ``dose_bq``)."""

    def factor(self, calculation: dict[str, Any] | None, series_uid: str) -> tuple[float | None, list[Said]]:
        if not calculation:
            return None, [Said(gettext_noop("the series has no SUV header facts"))]
        entered = self.entered.get(series_uid, {})
        return suv_method_factor(calculation, method=self.method, sex=self.sex,
                                 weight_kg=entered.get("weight_kg"), dose_bq=entered.get("dose_bq"))

    def overrides(self, calculations: dict[str, dict[str, Any] | None]) -> dict[str, float | None]:
        """Series UID -> the factor its layers use, where the header's SUVbw is not it.

        None marks a series this method cannot normalise: its layers show stored units.
        """
        if self.method == "bw" and not self.entered:
            return {}
        out: dict[str, float | None] = {}
        for uid, calculation in calculations.items():
            if calculation is None:
                continue
            if self.method != "bw" or uid in self.entered:
                out[uid] = self.factor(calculation, uid)[0]
        return out

    def choose(self, method: str) -> None:
        if method not in SUV_METHODS:
            raise SuvReadingError(gettext_noop("an SUV method is one of %(methods)s"),
                                  methods=", ".join(SUV_METHODS))
        self.method = method

    def enter(self, series_uid: str, calculation: dict[str, Any] | None, *, weight_kg: float | None,
              dose_bq: float | None) -> None:
        if not calculation:
            raise SuvReadingError(gettext_noop("only a PET series with SUV header facts takes a weight or "
                                               "dose"))
        values = {**self.entered.get(series_uid, {}),
                  **{k: v for k, v in (("weight_kg", weight_kg), ("dose_bq", dose_bq)) if v is not None}}
        self.entered[series_uid] = values

    def wire(self, calculations: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
        """For ``ready`` and ``suv``: the method, the choices and each PET series' factor or gaps, its
        words in the active language (the reader's)."""
        series = {}
        for uid, calculation in calculations.items():
            if calculation is None:
                continue
            factor, missing = self.factor(calculation, uid)
            series[uid] = {"factor": factor, "missing": [said(reason) for reason in missing],
                           "entered": self.entered.get(uid, {}),
                           "used": suv_facts(calculation, self.entered.get(uid))}
        return {"method": self.method, "label": gettext(SUV_METHODS[self.method]),
                "methods": [{"name": name, "label": gettext(label)} for name, label in SUV_METHODS.items()],
                "series": series}
