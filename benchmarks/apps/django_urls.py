"""Views and URLs of the Django benchmark app: /plain and /all (bench_work through Django's connection)."""

from bench_work import PLAIN, work
from django.db import connection
from django.http import HttpResponse
from django.urls import path


def plain(request):
    return HttpResponse(PLAIN, content_type="text/plain")


def all_(request):
    return HttpResponse(work(connection.cursor), content_type="text/plain")


urlpatterns = [path("plain", plain), path("all", all_)]
