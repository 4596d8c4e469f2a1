from django.urls import include, path

from accounts.admin import site as admin_site
from gateway import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("accounts.urls")),
    path("audit/", include("gateway.audit.urls")),
    path("imaging/", include("imaging.urls")),
    path("", include("rendering.urls")),
    path("dicomweb/", include("imaging.dicomweb_urls")),
    path("share/", include("gateway.sharing.urls")),
    path("admin/", admin_site.urls),
]
