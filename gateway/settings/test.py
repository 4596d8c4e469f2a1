"""Fast settings for the test suite: quick hasher, local cache, temporary keys."""

import os
import tempfile

os.environ.setdefault("GATEWAY_VAR_DIR", tempfile.mkdtemp(prefix="gateway-test-"))

from gateway.settings.base import *  # noqa: F403
from gateway.settings.base import DATABASES, REDIS_URL, STATIC_ROOT

STATIC_ROOT.mkdir(parents=True, exist_ok=True)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if not REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
for _alias, _database in DATABASES.items():
    if _database["ENGINE"].endswith("postgresql"):
        _database["TEST"] = {"NAME": f"test_gateway_{_alias}"}
