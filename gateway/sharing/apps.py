from django.apps import AppConfig


class SharingConfig(AppConfig):
    """Per-patient shares for external consultants (macaroons); clinical zone."""

    name = "gateway.sharing"
    label = "sharing"
    verbose_name = "Shares"

    def ready(self) -> None:
        from gateway.sharing import checks

        checks.register()
