from django.urls import path

from apps.keys import views

org_urlpatterns = [
    path("settings/keys/", views.ProviderKeysView.as_view(), name="provider_keys"),
    path(
        "settings/keys/<int:pk>/default/",
        views.ProviderKeyDefaultView.as_view(),
        name="provider_key_default",
    ),
    path(
        "settings/keys/<int:pk>/delete/",
        views.ProviderKeyDeleteView.as_view(),
        name="provider_key_delete",
    ),
    path("settings/tokens/", views.TokensView.as_view(), name="tokens"),
    path("settings/tokens/created/", views.TokenCreatedView.as_view(), name="token_created"),
    path("settings/tokens/<int:pk>/revoke/", views.TokenRevokeView.as_view(), name="token_revoke"),
]
