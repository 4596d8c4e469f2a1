from django.urls import path

from gateway.audit import views

app_name = "audit"

urlpatterns = [
    path("", views.console, name="console"),
    path("export", views.export, name="export"),
    path("verify", views.verify, name="verify"),
]
