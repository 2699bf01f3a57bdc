"""A settings module, as a project has: PostgreSQL from TRACE_RUN_TEST_PG_DSN, one app with one model."""

import os
from urllib.parse import urlsplit

_pg = urlsplit(os.environ.get("TRACE_RUN_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))

SECRET_KEY = "trace-run-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djsite.urls"
INSTALLED_APPS = ["djsite"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _pg.path.lstrip("/") or "test",
        "USER": _pg.username or "postgres",
        "PASSWORD": _pg.password or "",
        "HOST": _pg.hostname or "127.0.0.1",
        "PORT": str(_pg.port or 5432),
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
