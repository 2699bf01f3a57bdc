"""Views whose answers let the test check the context: they return the trace id they ran in."""

from django.http import Http404, HttpResponse, StreamingHttpResponse
from opentelemetry import trace

from .models import Item


def _trace_id() -> str:
    return "%032x" % trace.get_current_span().get_span_context().trace_id


def item(request, item_id):
    found = Item.objects.filter(pk=item_id).count()
    return HttpResponse("%s %d" % (_trace_id(), found), content_type="text/plain")


def boom(request):
    Item.objects.count()
    raise KeyError("boom")


def missing(request):
    raise Http404("no such thing")


def stream(request):
    def body():
        yield b"first "
        yield str(Item.objects.count()).encode()  # made while the body streams: still the request's
        yield b" " + _trace_id().encode()

    return StreamingHttpResponse(body(), content_type="text/plain")
