from django.apps import AppConfig
from django.db.models.signals import pre_delete, pre_save


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Fusion Gateway"

    def ready(self) -> None:
        from gateway import checks, keys, routers

        pre_save.connect(routers.zone_guard, dispatch_uid="gateway.zone_guard.save")
        pre_delete.connect(routers.zone_guard, dispatch_uid="gateway.zone_guard.delete")
        checks.register()
        keys.keyrings_load_all()
