"""ASGI entry point: HTTP through Django, websockets through Channels.

The websocket stack refuses a foreign Origin (cross-site websocket hijacking):
scheme, host and port must be the gateway's own (``gateway.origin``), before
authentication runs; a path no route names is closed with 4404.
``GatewayAuthStack`` adds the second factor to Channels' session and auth
stack; consumers bound to a session subclass
``accounts.websocket.SessionGuardedConsumer``.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.local")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from accounts.websocket import GatewayAuthStack  # noqa: E402
from gateway.bodies import bodies_streamed  # noqa: E402
from gateway.body_limit import BodyLimit  # noqa: E402
from gateway.consumers import RefuseConsumer  # noqa: E402
from gateway.origin import SameOriginValidator  # noqa: E402
from imaging.raw_import_asgi import RawImportGate  # noqa: E402
from imaging.stow_asgi import StowGate  # noqa: E402
from rendering.pool import render_pool_prestart  # noqa: E402
from rendering.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": bodies_streamed(StowGate(RawImportGate(BodyLimit(django_asgi_app)))),
        "websocket": SameOriginValidator(
            GatewayAuthStack(
                URLRouter([*websocket_urlpatterns, re_path(r"", RefuseConsumer.as_asgi())])
            )
        ),
    }
)

# manage.py serve starts each process's render workers with the process, not with its
# first viewer (whose first image would otherwise wait for them).
if os.environ.get("GATEWAY_RENDER_PRESTART") == "1":
    render_pool_prestart()
