from django.urls import include, path

from . import views

api = [path("items/<int:item_id>/", views.item), path("stream/", views.stream)]

urlpatterns = [
    path("api/", include(api)),
    path("boom/", views.boom),
    path("missing/", views.missing),
]
