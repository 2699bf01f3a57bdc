"""Settings of the Django app the overhead benchmark serves (gunicorn, one sync worker).

A project as `startproject` makes it, less what needs tables (sessions, auth, messages):
Security, Common, CSRF and clickjacking middleware; PostgreSQL through psycopg 3 with a
persistent connection (as the Flask app keeps one). Views and URLs are in django_urls.py.
"""

import os
from urllib.parse import urlsplit

_dsn = urlsplit(os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))

SECRET_KEY = "benchmark-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "django_urls"
INSTALLED_APPS: list = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _dsn.path.lstrip("/") or "test",
        "USER": _dsn.username or "postgres",
        "PASSWORD": _dsn.password or "",
        "HOST": _dsn.hostname or "127.0.0.1",
        "PORT": str(_dsn.port or 5432),
        "CONN_MAX_AGE": None,
    }
}
USE_TZ = True
