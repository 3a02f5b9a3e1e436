import sys

from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.views.decorators.debug import sensitive_variables

from apps.accounts import services
from apps.accounts.models import Organization, User, slug_validator, validate_slug_not_reserved


class Command(BaseCommand):
    help = (
        "Create an organization with an owner. Without --password-stdin the owner gets an "
        "unusable password and a set-password link is printed. Never prompts."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--owner-email", required=True)
        parser.add_argument("--name", help="Display name (default: the slug)")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the new owner's password from standard input.",
        )

    @sensitive_variables("password")
    def handle(self, *args, slug, owner_email, name, password_stdin, **options):
        try:
            slug_validator(slug)
            validate_slug_not_reserved(slug)
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from error
        if Organization.objects.filter(slug=slug).exists():
            raise CommandError(f"An organization with the slug {slug!r} already exists.")
        email = User.objects.normalize_email(owner_email)
        try:
            User._meta.get_field("email").run_validators(email)
        except ValidationError as error:
            raise CommandError(f"Not a valid e-mail address: {owner_email!r}") from error

        password = None
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise CommandError("--password-stdin was given but standard input was empty.")

        owner = User.objects.filter(email__iexact=email).first()
        if owner is None:
            if password is not None:
                try:
                    password_validation.validate_password(password, User(email=email))
                except ValidationError as error:
                    raise CommandError(" ".join(error.messages)) from error
            try:
                owner, organization = services.user_signup(
                    email=email,
                    password=password,
                    organization_name=name or slug,
                    organization_slug=slug,
                )
            except services.AccountsError as error:
                raise CommandError(str(error)) from error
        else:
            if password is not None:
                raise CommandError(
                    f"{email} already has an account; its password is left as it is. "
                    "Run again without --password-stdin."
                )
            organization = services.organization_create(name=name or slug, slug=slug, owner=owner)

        self.stdout.write(f"Created organization {organization.slug} owned by {owner.email}.")
        if not owner.has_usable_password():
            uid = urlsafe_base64_encode(force_bytes(owner.pk))
            token = default_token_generator.make_token(owner)
            path = reverse("password_reset_confirm", args=[uid, token])
            self.stdout.write(f"Set the owner's password: {settings.COSTR_BASE_URL}{path}")
