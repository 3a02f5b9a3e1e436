from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.debug import sensitive_post_parameters
from django.views.generic import FormView, TemplateView

from apps.accounts import legal, services
from apps.accounts.forms import (
    AuditLogFilterForm,
    InvitationForm,
    InvitedSignupForm,
    OrganizationForm,
    OrganizationSettingsForm,
    RoleForm,
    SignupForm,
)
from apps.accounts.mixins import OrganizationViewMixin
from apps.accounts.models import DpaAcceptance, Invitation, Membership, Organization
from apps.accounts.selectors import (
    memberships_of_user,
    organization_audit_actions,
    organization_audit_events,
    organization_members,
    organization_pending_invitations,
)


def landing(request):
    return render(request, "pages/landing.html")


def _invitation_in(next_url: str):
    """The pending invitation that a ``next`` URL (``/invite/<token>/``) names, with its token,
    or (None, "") for any other URL or an invitation that can no longer be used."""
    try:
        match = resolve(urlsplit(next_url or "").path)
    except Resolver404:
        return None, ""
    if match.url_name != "invitation_accept":
        return None, ""
    try:
        return services.invitation_from_token(match.kwargs["token"]), match.kwargs["token"]
    except services.AccountsError:
        return None, ""


@method_decorator(sensitive_post_parameters("password"), name="dispatch")
class SignupView(FormView):
    """Sign-up with an organization of one's own; or, arriving from an invitation link, sign-up
    that joins the inviting organization instead."""

    template_name = "accounts/signup.html"
    form_class = SignupForm

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:
            return redirect("app")
        self.next_url = request.POST.get("next") or request.GET.get("next") or ""
        self.invitation, self.invitation_token = _invitation_in(self.next_url)
        return super().dispatch(request, *args, **kwargs)

    def get_form_class(self):
        return InvitedSignupForm if self.invitation else SignupForm

    def get_form_kwargs(self):
        kwargs = super().get_form_kwargs()
        if self.invitation:
            kwargs["invitation"] = self.invitation
        return kwargs

    def get_initial(self):
        return {"email": self.request.GET.get("email", "")}

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["invitation"] = self.invitation
        context["next_url"] = self.next_url
        return context

    def form_valid(self, form):
        if self.invitation:
            return self.join_by_invitation(form)
        data = form.cleaned_data
        try:
            user, organization = services.user_signup(
                email=data["email"],
                password=data["password"],
                name=data["name"],
                organization_name=data["organization_name"],
                organization_slug=data["organization_slug"],
                ip=services.client_ip(self.request),
            )
        except services.AccountsError as error:
            form.add_error(None, str(error))
            return self.form_invalid(form)
        login(self.request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(self.request, f"Welcome to Costr. {organization.name} is ready.")
        if self.next_url.startswith("/invite/"):
            return redirect(self.next_url)
        return redirect("org_home", org_slug=organization.slug)

    def join_by_invitation(self, form):
        try:
            user, membership = services.user_signup_by_invitation(
                token=self.invitation_token,
                password=form.cleaned_data["password"],
                name=form.cleaned_data["name"],
                ip=services.client_ip(self.request),
            )
        except services.AccountsError as error:
            form.add_error(None, str(error))
            return self.form_invalid(form)
        login(self.request, user, backend="django.contrib.auth.backends.ModelBackend")
        organization = membership.organization
        welcome = f"Welcome to Costr. You joined {organization.name}"
        messages.success(self.request, services.with_full_stop(welcome))
        return redirect("org_home", org_slug=organization.slug)


@login_required
def app_home(request):
    """Send a person to their organization, or to a chooser when they have several."""
    memberships = list(memberships_of_user(user=request.user))
    if len(memberships) == 1:
        return redirect("org_home", org_slug=memberships[0].organization.slug)
    return render(request, "accounts/choose_org.html", {"memberships": memberships})


class OrganizationCreateView(LoginRequiredMixin, FormView):
    template_name = "accounts/org_create.html"
    form_class = OrganizationForm

    def form_valid(self, form):
        organization = services.organization_create(
            name=form.cleaned_data["organization_name"],
            slug=form.cleaned_data["organization_slug"],
            owner=self.request.user,
            ip=services.client_ip(self.request),
        )
        messages.success(self.request, f"{organization.name} is ready.")
        return redirect("org_home", org_slug=organization.slug)


class MembersView(OrganizationViewMixin, TemplateView):
    template_name = "accounts/members.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["members"] = organization_members(organization=self.organization)
        context["invitations"] = organization_pending_invitations(organization=self.organization)
        context["can_manage"] = self.membership.has_role("admin")
        context["invite_form"] = kwargs.get("invite_form") or InvitationForm()
        context["invite_link"] = self.request.session.pop("costr_invite_link", None)
        return context

    def post(self, request, *args, **kwargs):
        form = InvitationForm(request.POST)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(invite_form=form), status=400)
        try:
            invitation = services.invitation_create(
                organization=self.organization,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
                invited_by=request.user,
                ip=services.client_ip(request),
            )
        except services.AccountsError as error:
            form.add_error("email", str(error))
            return self.render_to_response(self.get_context_data(invite_form=form), status=400)
        link = request.build_absolute_uri(
            reverse("invitation_accept", args=[services.invitation_token(invitation)])
        )
        services.invitation_email_send(invitation=invitation, link=link)
        request.session["costr_invite_link"] = link
        messages.success(request, f"Invitation sent to {invitation.email}.")
        return redirect("members", org_slug=self.organization.slug)


class MembershipRoleView(OrganizationViewMixin, View):
    def post(self, request, org_slug, pk):
        membership = get_object_or_404(
            Membership.objects.for_org(self.organization).select_related("user"), pk=pk
        )
        form = RoleForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Choose a valid role.")
            return redirect("members", org_slug=org_slug)
        try:
            services.membership_change_role(
                membership=membership,
                role=form.cleaned_data["role"],
                actor=request.user,
                ip=services.client_ip(request),
            )
        except services.AccountsError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"{membership.user.email} is now {membership.role}.")
        return redirect("members", org_slug=org_slug)


class MembershipRemoveView(OrganizationViewMixin, TemplateView):
    """Asks for confirmation on GET, removes on POST. Anyone may leave; removing others is for
    admins (and removing an owner, for owners: the service decides that)."""

    template_name = "accounts/member_remove.html"
    write_role = "member"

    def get_target(self):
        target = get_object_or_404(
            Membership.objects.for_org(self.organization).select_related("user"),
            pk=self.kwargs["pk"],
        )
        if target.user_id != self.request.user.pk and not self.membership.has_role("admin"):
            raise PermissionDenied("Only admins can remove members.")
        return target

    def get(self, request, *args, **kwargs):
        return self.render_to_response(self.get_context_data(target=self.get_target()))

    def post(self, request, org_slug, pk):
        target = self.get_target()
        try:
            services.membership_remove(
                membership=target, actor=request.user, ip=services.client_ip(request)
            )
        except services.AccountsError as error:
            messages.error(request, str(error))
            return redirect("members", org_slug=org_slug)
        if target.user_id == request.user.pk:
            messages.success(request, services.with_full_stop(f"You left {self.organization.name}"))
            return redirect("app")
        messages.success(request, f"{target.user.email} was removed.")
        return redirect("members", org_slug=org_slug)


class InvitationRevokeView(OrganizationViewMixin, View):
    def post(self, request, org_slug, pk):
        invitation = get_object_or_404(Invitation.objects.for_org(self.organization), pk=pk)
        services.invitation_revoke(
            invitation=invitation, actor=request.user, ip=services.client_ip(request)
        )
        messages.success(request, f"The invitation to {invitation.email} was withdrawn.")
        return redirect("members", org_slug=org_slug)


class InvitationAcceptView(View):
    template_name = "accounts/invitation.html"

    def get(self, request, token):
        try:
            invitation = services.invitation_from_token(token)
        except services.AccountsError as error:
            return render(request, self.template_name, {"error": str(error)}, status=410)
        return render(request, self.template_name, {"invitation": invitation, "token": token})

    def post(self, request, token):
        if not request.user.is_authenticated:
            return redirect(f"{reverse('login')}?next={request.path}")
        try:
            membership = services.invitation_accept(
                token=token, user=request.user, ip=services.client_ip(request)
            )
        except services.AccountsError as error:
            return render(request, self.template_name, {"error": str(error)}, status=400)
        messages.success(
            request, services.with_full_stop(f"You joined {membership.organization.name}")
        )
        return redirect("org_home", org_slug=membership.organization.slug)


class OrganizationSettingsView(OrganizationViewMixin, TemplateView):
    template_name = "accounts/org_settings.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["form"] = kwargs.get("form") or OrganizationSettingsForm(instance=self.organization)
        context["can_manage"] = self.membership.has_role("admin")
        acceptances = list(DpaAcceptance.objects.for_org(self.organization))
        context["dpa"] = legal.CURRENT_DPA
        context["dpa_accepted"] = next(
            (a for a in acceptances if a.version == legal.CURRENT_DPA.version), None
        )
        context["dpa_earlier"] = [a for a in acceptances if a.version != legal.CURRENT_DPA.version]
        return context

    def post(self, request, *args, **kwargs):
        # A bound ModelForm writes into its instance while validating: give it a copy, so a
        # refused change never alters the organization shown on the page.
        draft = Organization.objects.get(pk=self.organization.pk)
        form = OrganizationSettingsForm(request.POST, instance=draft)
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        services.organization_update(
            organization=self.organization,
            changes={name: form.cleaned_data[name] for name in form.fields},
            actor=request.user,
            ip=services.client_ip(request),
        )
        messages.success(request, "Settings saved.")
        return redirect("org_settings", org_slug=self.organization.slug)


class DpaAcceptView(OrganizationViewMixin, View):
    """Accepts the current DPA version for the organization (admins and owners)."""

    def post(self, request, org_slug):
        version = request.POST.get("version", "")
        if version != legal.CURRENT_DPA.version:
            messages.error(
                request,
                f"The DPA changed to version {legal.CURRENT_DPA.version} while you were reading; "
                "please read it again before accepting.",
            )
            return redirect("org_settings", org_slug=org_slug)
        acceptance = services.dpa_accept(
            organization=self.organization,
            version=version,
            actor=request.user,
            ip=services.client_ip(request),
        )
        messages.success(
            request,
            f"DPA version {acceptance.version} accepted by {acceptance.accepted_by_label}.",
        )
        return redirect("org_settings", org_slug=org_slug)


class AuditLogView(OrganizationViewMixin, TemplateView):
    """Every security-relevant change in the organization, filterable. Admins only: it shows who
    did what from which IP address."""

    template_name = "accounts/audit_log.html"
    required_role = "admin"
    paginate_by = 50

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        actions = organization_audit_actions(organization=self.organization)
        form = AuditLogFilterForm(self.request.GET or None, actions=actions)
        filters = form.cleaned_data if form.is_valid() else {}
        events = organization_audit_events(organization=self.organization, **filters)
        page = Paginator(events, self.paginate_by).get_page(self.request.GET.get("page"))
        query = self.request.GET.copy()
        query.pop("page", None)
        context.update(
            form=form, page=page, query=query.urlencode(), filtered=any(filters.values())
        )
        return context
