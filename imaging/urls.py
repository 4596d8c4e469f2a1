from django.urls import path

from imaging import raw_import_views, views

app_name = "imaging"
urlpatterns = [
    path("worklist", views.worklist, name="worklist"),
    path("pacs/retrieve", views.retrieve, name="retrieve"),
    path("pacs/retrievals/<int:retrieval>/", views.retrieval, name="retrieval"),
    path("pacs/retrievals/<int:retrieval>/stop", views.retrieval_stop, name="retrieval_stop"),
    path("pacs/queue", views.send_queue, name="pacs_queue"),
    path("raw-import", raw_import_views.raw_import, name="raw_import"),
]
