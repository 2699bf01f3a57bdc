import os

from django.db import models


class Item(models.Model):
    """The test creates its table (managed=False: no migrations needed)."""

    name = models.TextField()

    class Meta:
        app_label = "djsite"
        # the test names it: a table per test process, so that parallel test workers keep apart
        db_table = os.environ.get("TRACE_RUN_TEST_DJANGO_TABLE", "trace_run_django_items")
        managed = False
