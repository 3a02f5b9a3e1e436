from django.contrib.auth import views as auth_views
from django.urls import path

from apps.accounts import throttling, views
from apps.accounts.forms import EmailAuthenticationForm

urlpatterns = [
    path("signup/", views.SignupView.as_view(), name="signup"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            authentication_form=EmailAuthenticationForm, redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password/change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "password/change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("password/reset/", throttling.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "reset/<uidb64>/<token>/",
        throttling.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("invite/<str:token>/", views.InvitationAcceptView.as_view(), name="invitation_accept"),
    path("app/", views.app_home, name="app"),
    path("app/new/", views.OrganizationCreateView.as_view(), name="org_create"),
]

org_urlpatterns = [
    path("settings/", views.OrganizationSettingsView.as_view(), name="org_settings"),
    path("settings/dpa/accept/", views.DpaAcceptView.as_view(), name="dpa_accept"),
    path("members/", views.MembersView.as_view(), name="members"),
    path("audit/", views.AuditLogView.as_view(), name="audit_log"),
    path("members/<int:pk>/role/", views.MembershipRoleView.as_view(), name="member_role"),
    path("members/<int:pk>/remove/", views.MembershipRemoveView.as_view(), name="member_remove"),
    path(
        "invitations/<int:pk>/revoke/",
        views.InvitationRevokeView.as_view(),
        name="invitation_revoke",
    ),
]
