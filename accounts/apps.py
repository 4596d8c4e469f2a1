from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "People, roles and their second factors"

    def ready(self) -> None:
        from accounts import checks, signals

        checks.register()
        signals.connect()
