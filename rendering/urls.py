from django.urls import path, re_path, register_converter

from rendering import layout_views, report_views, views


class StudyUidConverter:
    regex = "[0-9.]{1,64}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class KeyImageConverter(StudyUidConverter):
    regex = "[0-9a-f]{12}"


register_converter(StudyUidConverter, "study_uid")
register_converter(KeyImageConverter, "key_image")

app_name = "rendering"

urlpatterns = [
    re_path(r"^viewer/(?P<study>[0-9.]{1,64})/$", views.viewer, name="viewer"),
    re_path(r"^viewer/(?P<study>[0-9.]{1,64})/findings\.(?P<extension>xlsx|csv)$", views.findings_export,
            name="findings"),
    path("viewer/layouts/", layout_views.layouts, name="layouts"),
    path("viewer/layouts/hospital/", layout_views.layouts_hospital, name="layouts_hospital"),
    path("reports/<study_uid:study>/", report_views.report_page, name="report"),
    path("reports/<study_uid:study>/start", report_views.report_start, name="report_start"),
    path("reports/<study_uid:study>/v<int:version>/save", report_views.report_save, name="report_save"),
    path("reports/<study_uid:study>/v<int:version>/images/<key_image:image>/adjust",
         report_views.report_adjust, name="report_adjust"),
    path("reports/<study_uid:study>/v<int:version>/images/<key_image:image>.png",
         report_views.report_image, name="report_image"),
    path("reports/<study_uid:study>/v<int:version>/sign", report_views.report_sign_view, name="report_sign"),
    path("reports/<study_uid:study>/v<int:version>/send", report_views.report_send_view, name="report_send"),
    path("reports/<study_uid:study>/v<int:version>.pdf", report_views.report_export,
         {"extension": "pdf"}, name="report_pdf"),
    re_path(r"^reports/(?P<study>[0-9.]{1,64})/v(?P<version>[0-9]{1,6})/page-(?P<page>[0-9]{1,3})"
            r"\.(?P<page_format>png|jpg)$", report_views.report_page_export, name="report_page"),
]
