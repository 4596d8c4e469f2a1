"""ASGI entry point: HTTP through Django, websockets through Channels.

The websocket stack refuses a foreign Origin (cross-site websocket hijacking)
before authentication runs, and a path no route names is refused too.
``GatewayAuthStack`` adds the second factor to Channels' session and auth
stack; consumers bound to a session subclass
``accounts.websocket.SessionGuardedConsumer``.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.local")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from accounts.websocket import GatewayAuthStack  # noqa: E402
from gateway.consumers import RefuseConsumer  # noqa: E402
from rendering.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            GatewayAuthStack(
                URLRouter([*websocket_urlpatterns, re_path(r"", RefuseConsumer.as_asgi())])
            )
        ),
    }
)
