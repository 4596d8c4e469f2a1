"""Every benchmark script starts as a person runs it: a plain interpreter, no Django settings.

A module that reads Django's settings when it is imported (a translation mark made with Django's
``gettext_noop`` at import time did) breaks the scripts that import it before they set Django up.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

SCRIPTS = sorted((settings.BASE_DIR / "bench").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_the_script_starts_without_settings(script):
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("DJANGO_", "GATEWAY_"))}
    runnable = 'if __name__ == "__main__"' in script.read_text()
    # A helper module of the others (no main) must import as cleanly.
    answer = subprocess.run([sys.executable, str(script), *(["--help"] if runnable else [])],
                            cwd=settings.BASE_DIR, env=environment, capture_output=True, text=True,
                            timeout=120)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert "usage" in answer.stdout.lower() or not runnable
