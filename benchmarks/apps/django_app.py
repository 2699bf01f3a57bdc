"""WSGI entry of the Django benchmark app: `gunicorn django_app:application`."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
