from django.urls import path

from imaging import dicomweb

app_name = "dicomweb"
urlpatterns = [
    path("studies", dicomweb.stow, name="stow"),
]
