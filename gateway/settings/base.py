"""Settings shared by every deployment, driven by the environment.

The embedded defaults (three SQLite files under ``var/``, in-process channel
layer and cache, keys generated under ``var/keys/``) serve ``make run`` on a
fresh machine. Production sets the ``*_DATABASE_URL`` variables, ``REDIS_URL``,
``GATEWAY_HTTPS=1`` and supplies its secrets; see README.md for the table.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import dj_database_url

from gateway.config import (
    ConfigurationError,
    env_bool,
    env_int,
    env_list,
    env_str,
    private_file_check,
    private_file_write,
    secret,
)

BASE_DIR = Path(__file__).resolve().parents[2]
VAR_DIR = Path(env_str("GATEWAY_VAR_DIR", str(BASE_DIR / "var"))).resolve()
KEYS_DIR = Path(env_str("GATEWAY_KEYS_DIR", str(VAR_DIR / "keys"))).resolve()
KEYS_GENERATE = env_bool("GATEWAY_KEYS_GENERATE", True)
DEMO_ALLOWED = env_bool("GATEWAY_DEMO", True)

DEBUG = env_bool("GATEWAY_DEBUG")
ALLOWED_HOSTS = env_list("GATEWAY_ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("GATEWAY_CSRF_TRUSTED_ORIGINS", [])


def _secret_key() -> str:
    configured = secret("GATEWAY_SECRET_KEY")
    if configured:
        return configured
    if not KEYS_GENERATE:
        raise ConfigurationError("GATEWAY_SECRET_KEY or GATEWAY_SECRET_KEY_FILE must be set")
    path = KEYS_DIR / "django-secret-key"
    private_file_write(path, secrets.token_urlsafe(64).encode())
    private_file_check(path)
    return path.read_text(encoding="utf-8").strip()


SECRET_KEY = _secret_key()

# django-otp's own TOTP and static-token plugins are deliberately absent: they
# keep TOTP keys and backup codes in plaintext. accounts.TOTPDevice (sealed
# secret, replay-proof) and accounts.BackupCodeDevice (keyed hashes) replace
# them; the check accounts.E001 refuses the plugins.
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin.apps.SimpleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_otp",
    "gateway",
    "accounts",
    "imaging",
    "imaging.identity",
    "gateway.audit",
    "rendering",
    "gateway.sharing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "gateway.middleware.NoStoreMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.SessionPolicyMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "gateway.sharing.middleware.CapabilityMiddleware",
    "accounts.middleware.AccessGate",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gateway.urls"
ASGI_APPLICATION = "gateway.asgi.application"
WSGI_APPLICATION = "gateway.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
                "csp.context_processors.nonce",
            ],
        },
    },
]


def _sqlite(name: str) -> dict:
    (VAR_DIR / "db").mkdir(mode=0o700, parents=True, exist_ok=True)
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": VAR_DIR / "db" / f"{name}.sqlite3",
        "OPTIONS": {
            "init_command": (
                "PRAGMA journal_mode=WAL;PRAGMA synchronous=NORMAL;"
                "PRAGMA foreign_keys=ON;PRAGMA busy_timeout=20000"
            ),
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        # Test databases are files too: an in-memory shared-cache database
        # answers "table is locked" at once instead of waiting, so row-lock
        # semantics (BEGIN IMMEDIATE + busy timeout) could not be tested.
        "TEST": {"NAME": str(VAR_DIR / "db" / f"test_{name}.sqlite3")},
    }


def _database(url_variable: str, sqlite_name: str) -> dict:
    url = env_str(url_variable)
    if not url:
        return _sqlite(sqlite_name)
    return dict(dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True))


DATABASES = {
    "default": _database("DATABASE_URL", "clinical"),
    "identity": _database("IDENTITY_DATABASE_URL", "identity"),
    "audit": _database("AUDIT_DATABASE_URL", "audit"),
}
DATABASE_ROUTERS = ["gateway.routers.ZoneRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
# redis-py 8 reads with a 5 s socket timeout by default, the same 5 s that channels_redis
# blocks for in BZPOPMIN: the read then times out and the websocket consumer dies with
# 1011. The socket timeout must exceed the blocking pop.
_REDIS_HOST = {"address": REDIS_URL, "socket_timeout": 30, "socket_connect_timeout": 5}
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [_REDIS_HOST]},
        },
        # Render requests and replies (GATEWAY_RENDER_MODE=remote): a layer instance of
        # their own, so they never share a receive loop or a capacity with the websockets.
        # Short expiry: a frame nobody collected within 30 s is stale anyway.
        "render": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [_REDIS_HOST], "prefix": "gateway-render:", "expiry": 30,
                       "capacity": 1000},
        },
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # Without Redis, group messages (sign-out, revocation) still reach every server
    # process of this host: see gateway.hostlayer.
    CHANNEL_LAYERS = {"default": {"BACKEND": "gateway.hostlayer.HostChannelLayer",
                                  "CONFIG": {"directory": str(VAR_DIR / "run" / "channels")}},
                      "render": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "accounts:login"

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
# NIST SP 800-63B 5.1.1: length, not composition. Argon2id hashes the whole
# password (no truncation), so the maximum only bounds request size.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "accounts.validators.MaximumLengthValidator", "OPTIONS": {"max_length": 256}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "accounts.validators.ContextWordsValidator"},
]

# Throttling and lockout (accounts.services): after THROTTLE_FREE_FAILURES
# consecutive failures each attempt waits BASE * 2^n seconds (at most MAX);
# at LOCKOUT_THRESHOLD the account name or source address is locked until an
# IT admin unlocks it. Counts reset only when both factors succeed.
ACCOUNTS_LOCKOUT_THRESHOLD = env_int("GATEWAY_LOCKOUT_THRESHOLD", 100)
ACCOUNTS_THROTTLE_FREE_FAILURES = env_int("GATEWAY_THROTTLE_FREE_FAILURES", 3)
ACCOUNTS_THROTTLE_BASE_SECONDS = env_int("GATEWAY_THROTTLE_BASE_SECONDS", 2)
ACCOUNTS_THROTTLE_MAX_SECONDS = env_int("GATEWAY_THROTTLE_MAX_SECONDS", 900)
ACCOUNTS_WEBSOCKET_SESSION_CHECK_SECONDS = env_int("GATEWAY_WEBSOCKET_SESSION_CHECK_SECONDS", 30)

LANGUAGE_CODE = env_str("GATEWAY_LANGUAGE", "en")
# Each page follows the browser's Accept-Language or the reader's own choice (the
# language form in the page header); the catalogues live in locale/, compiled and
# committed, so a fresh machine serves them without gettext installed.
LANGUAGES = [("en", "English"), ("hu", "Magyar")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env_str("GATEWAY_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Transport security. Over HTTPS (GATEWAY_HTTPS=1) cookies are Secure and
# carry the __Host- prefix, which pins them to this exact origin.
HTTPS = env_bool("GATEWAY_HTTPS")
_COOKIE_PREFIX = "__Host-" if HTTPS else ""
SESSION_COOKIE_NAME = f"{_COOKIE_PREFIX}gateway-session"
CSRF_COOKIE_NAME = f"{_COOKIE_PREFIX}gateway-csrf"
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS and env_bool("GATEWAY_SSL_REDIRECT", True)
if env_bool("GATEWAY_BEHIND_PROXY"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Strict"
CSRF_COOKIE_SAMESITE = "Strict"
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_AGE = env_int("GATEWAY_SESSION_ABSOLUTE_SECONDS", 12 * 3600)
SESSION_IDLE_SECONDS = env_int("GATEWAY_SESSION_IDLE_SECONDS", 30 * 60)
SECURE_HSTS_SECONDS = 31_536_000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
# Preloading commits a whole registrable domain to HTTPS in every browser;
# that is the hospital's decision, so it is opt-in and its check is silenced.
SECURE_HSTS_PRELOAD = env_bool("GATEWAY_HSTS_PRELOAD")
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
# same-origin, not no-referrer: under no-referrer browsers send "Origin: null" with
# form posts, which CSRF protection must (and does) refuse. Nothing leaves the origin.
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"

DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("GATEWAY_UPLOAD_MAX_MEMORY_BYTES", 2_621_440)

# daphne processes of `manage.py serve` (make run's web tier; 0: one per core).
WEB_PROCESSES = env_int("GATEWAY_WEB_PROCESSES", 0)
# Render workers per server process (0: one per core; `serve` divides the cores among
# its processes) and each worker's volume cache.
RENDER_WORKERS = env_int("GATEWAY_RENDER_WORKERS", 0)
RENDER_CACHE_MB = env_int("GATEWAY_RENDER_CACHE_MB", 2048)
# One decrypted copy of each volume per host, mapped by every worker (rendering/hostvolumes.py):
# a tmpfs directory private to this deployment ("" turns sharing off) and its budget.
_SHM = Path("/dev/shm")  # noqa: S108  (memory-backed; the directory below is 0700)
RENDER_SHARED_DIR = env_str(
    "GATEWAY_RENDER_SHARED_DIR",
    str(_SHM / f"fusion-gateway-{os.getuid()}-{hashlib.sha256(str(VAR_DIR).encode()).hexdigest()[:12]}")
    if _SHM.is_dir() else "")
RENDER_SHARED_MB = env_int("GATEWAY_RENDER_SHARED_MB", 2048)
# "local": those workers run beside each server process. "remote": requests go over the
# "render" channel layer (Redis) to `manage.py render_worker` on any host (rendering/remote.py).
RENDER_MODE = env_str("GATEWAY_RENDER_MODE", "local")
RENDER_CHANNEL = env_str("GATEWAY_RENDER_CHANNEL", "render")
RENDER_CHANNEL_LAYER = "render"
# An accepted request whose worker falls silent this long is sent to another worker;
# one nobody accepts within the queue limit is sent again.
RENDER_REMOTE_SILENCE_MS = env_int("GATEWAY_RENDER_SILENCE_MS", 1000)
RENDER_REMOTE_QUEUE_MS = env_int("GATEWAY_RENDER_QUEUE_MS", 5000)

# Shares for external consultants (gateway.sharing.conf).
SHARING_DEFAULT_HOURS = env_int("GATEWAY_SHARE_DEFAULT_HOURS", 72)
SHARING_MAX_DAYS = env_int("GATEWAY_SHARE_MAX_DAYS", 30)
SHARING_PIN_ATTEMPTS = env_int("GATEWAY_SHARE_PIN_ATTEMPTS", 5)

AUDIT_CHECKPOINT_DIR = Path(
    env_str("GATEWAY_AUDIT_CHECKPOINT_DIR", str(VAR_DIR / "audit-checkpoints"))
).resolve()
AUDIT_CHECKPOINT_SYSLOG = env_str("GATEWAY_AUDIT_CHECKPOINT_SYSLOG")

# Imaging (imaging.conf): encrypted object store, ingest limits, the SCP, the store's budget.
IMAGING_STORAGE_DIR = Path(env_str("GATEWAY_STORAGE_DIR", str(VAR_DIR / "objects"))).resolve()
IMAGING_MAX_OBJECT_BYTES = env_int("GATEWAY_MAX_OBJECT_BYTES", 1 << 30)
IMAGING_SCP_AE_TITLE = env_str("GATEWAY_SCP_AE_TITLE", "FUSIONGW")
IMAGING_SCP_PORT = env_int("GATEWAY_SCP_PORT", 11112)
IMAGING_STOW_MAX_BYTES = env_int("GATEWAY_STOW_MAX_BYTES", 1 << 30)
IMAGING_STOW_MAX_PARTS = env_int("GATEWAY_STOW_MAX_PARTS", 10_000)
IMAGING_STOW_CONCURRENT_PER_DEVICE = env_int("GATEWAY_STOW_CONCURRENT_PER_DEVICE", 2)
IMAGING_STORE_BUDGET_BYTES = env_int("GATEWAY_STORE_BUDGET_BYTES", 0)
IMAGING_STORE_KEEP_OPENED_S = env_int("GATEWAY_STORE_KEEP_OPENED_S", 12 * 3600)
# The hospital's PACS (imaging.pacs_*): TLS trust for peers registered with --tls, and priors prefetched.
IMAGING_PACS_TLS_CA = env_str("GATEWAY_PACS_TLS_CA")
IMAGING_PACS_PREFETCH_PRIORS = env_int("GATEWAY_PACS_PREFETCH_PRIORS", 0)
IMAGING_PACS_PREFETCH_ANY_MODALITY = env_bool("GATEWAY_PACS_PREFETCH_ANY_MODALITY", False)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("GATEWAY_LOG_LEVEL", "INFO")},
    # pynetdicom logs every association and C-STORE at INFO: two lines per instance sent.
    "loggers": {"pynetdicom": {"level": "WARNING"}},
}
