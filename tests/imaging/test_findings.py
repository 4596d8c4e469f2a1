"""The findings table's own rules (the websocket flow is in tests/rendering/test_consumer.py)."""

from __future__ import annotations


def test_a_formula_like_label_is_kept_as_text_within_its_column():
    from imaging.findings import _safe_label

    assert _safe_label("=" + "x" * 80) == "'=" + "x" * 62
    assert len(_safe_label("+" * 64)) == 64 and _safe_label("lesion 1") == "lesion 1"
