from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.login_view, name="login"),
    path("otp/", views.otp_view, name="otp"),
    path("enrol/", views.enrol_view, name="enrol"),
    path("logout/", views.logout_view, name="logout"),
    path("security/", views.security_view, name="security"),
    path("security/password/", views.password_change_view, name="password_change"),
    path("security/backup-codes/", views.backup_codes_view, name="backup_codes"),
    path("security/logout-everywhere/", views.logout_everywhere_view, name="logout_everywhere"),
]
