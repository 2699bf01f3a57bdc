from django.db import models


class Item(models.Model):
    """The test creates its table (managed=False: no migrations needed)."""

    name = models.TextField()

    class Meta:
        app_label = "djsite"
        db_table = "trace_run_django_items"
        managed = False
