from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The audit zone; the router keeps these models in the ``audit`` database."""

    name = "gateway.audit"
    label = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from gateway.audit import receivers

        receivers.connect()
