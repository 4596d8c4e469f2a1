from django.urls import path, re_path

from gateway.sharing import views

app_name = "sharing"

urlpatterns = [
    re_path(r"^new/(?P<study>[0-9.]{1,64})/$", views.mint, name="mint"),
    path("active/", views.active, name="active"),
    re_path(r"^(?P<share>[0-9a-f]{24})/revoke/$", views.revoke, name="revoke"),
    path("open/", views.open_share, name="open"),
    path("pin/", views.pin, name="pin"),
    path("", views.home, name="home"),
    path("forward/", views.forward, name="forward"),
    path("leave/", views.leave, name="leave"),
]
