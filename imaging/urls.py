from django.urls import path

from imaging import views

app_name = "imaging"
urlpatterns = [
    path("worklist", views.worklist, name="worklist"),
]
