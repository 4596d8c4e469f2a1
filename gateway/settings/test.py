"""Fast settings for the test suite: quick hasher, local cache, temporary keys."""

import os
import re
import secrets
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("GATEWAY_VAR_DIR", tempfile.mkdtemp(prefix="gateway-test-"))

from gateway.settings.base import *  # noqa: F403
from gateway.settings.base import DATABASES, REDIS_URL, STATIC_ROOT, VAR_DIR

# The suite's own in-process pools share volumes in its temporary var dir, not in /dev/shm.
RENDER_SHARED_DIR = str(VAR_DIR / "shared-volumes")

STATIC_ROOT.mkdir(parents=True, exist_ok=True)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if not REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Test databases are named per run: two runs against one PostgreSQL server (two CI jobs,
# a developer beside CI) would otherwise create, fill and drop the same test_<name>
# under each other. GATEWAY_TEST_DB_SUFFIX fixes the suffix (to find a run's databases);
# pytest-django adds _gw<N> for each pytest-xdist worker on top.
TEST_DB_SUFFIX = os.environ.get("GATEWAY_TEST_DB_SUFFIX") or f"{os.getpid()}_{secrets.token_hex(3)}"
if not re.fullmatch(r"[a-z0-9_]{1,24}", TEST_DB_SUFFIX):
    raise ImproperlyConfigured("GATEWAY_TEST_DB_SUFFIX: 1 to 24 characters of a-z, 0-9 and _")
for _alias, _database in DATABASES.items():
    if _database["ENGINE"].endswith("postgresql"):
        _database["TEST"] = {"NAME": f"test_gateway_{_alias}_{TEST_DB_SUFFIX}"}
    else:
        _name = Path(_database["TEST"]["NAME"])
        _database["TEST"] = {"NAME": str(_name.with_stem(f"{_name.stem}_{TEST_DB_SUFFIX}"))}
