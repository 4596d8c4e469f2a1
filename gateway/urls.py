from django.contrib.auth.decorators import login_not_required
from django.urls import include, path
from django.views.i18n import JavaScriptCatalog, set_language

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
    path("i18n/", include(([
        path("catalogue.js", login_not_required(JavaScriptCatalog.as_view()), name="catalogue"),
        path("language", login_not_required(set_language), name="language"),
    ], "i18n"))),
]
