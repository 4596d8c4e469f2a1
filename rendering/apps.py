from django.apps import AppConfig


class RenderingConfig(AppConfig):
    name = "rendering"
    verbose_name = "Server-side rendering and the viewer websocket"

    def ready(self) -> None:
        from rendering import checks  # noqa: F401  (registers the system checks)
