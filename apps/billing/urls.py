from django.urls import path

from apps.billing import views

org_urlpatterns = [
    path("settings/stripe/", views.StripeSettingsView.as_view(), name="stripe_settings"),
    path("settings/stripe/sync/", views.StripeSyncView.as_view(), name="stripe_sync"),
    path(
        "settings/stripe/metadata-field/",
        views.StripeMetadataFieldView.as_view(),
        name="stripe_metadata_field",
    ),
    path(
        "settings/stripe/disconnect/",
        views.StripeDisconnectView.as_view(),
        name="stripe_disconnect",
    ),
    path(
        "settings/stripe/customers/", views.StripeCustomersView.as_view(), name="stripe_customers"
    ),
    path(
        "settings/stripe/customers/<int:pk>/map/",
        views.StripeCustomerMapView.as_view(),
        name="stripe_customer_map",
    ),
]
