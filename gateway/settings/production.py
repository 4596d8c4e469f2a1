"""Production settings: HTTPS only, no generated secrets, explicit hosts.

Everything ``base`` reads from the environment still applies; this module
removes the conveniences that are only safe on a developer's loopback.
"""

import os

os.environ.setdefault("GATEWAY_HTTPS", "1")
os.environ.setdefault("GATEWAY_KEYS_GENERATE", "0")
os.environ.setdefault("GATEWAY_DEMO", "0")

from gateway.config import ConfigurationError
from gateway.settings.base import *  # noqa: F403
from gateway.settings.base import ALLOWED_HOSTS, DEBUG, HTTPS

if DEBUG:
    raise ConfigurationError("GATEWAY_DEBUG must be off in production")
if not HTTPS:
    raise ConfigurationError("production serves HTTPS only (GATEWAY_HTTPS=1)")
if "GATEWAY_ALLOWED_HOSTS" not in os.environ or not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS:
    raise ConfigurationError("GATEWAY_ALLOWED_HOSTS must list this gateway's host names")
