from django.db import migrations

from gateway.audit import append_only


def _apply(enable):
    def run(apps, schema_editor):
        for statement in append_only.statements(schema_editor.connection, enable=enable):
            schema_editor.execute(statement, params=None)
    return run


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(_apply(True), _apply(False))]
