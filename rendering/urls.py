from django.urls import re_path

from rendering import views

app_name = "rendering"

urlpatterns = [
    re_path(r"^viewer/(?P<study>[0-9.]{1,64})/$", views.viewer, name="viewer"),
    re_path(r"^viewer/(?P<study>[0-9.]{1,64})/findings\.(?P<extension>xlsx|csv)$", views.findings_export,
            name="findings"),
]
