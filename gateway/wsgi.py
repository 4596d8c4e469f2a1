"""WSGI entry point, for management tooling only; the gateway is served over ASGI."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings.local")
application = get_wsgi_application()
