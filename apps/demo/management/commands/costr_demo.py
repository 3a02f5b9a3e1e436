import secrets
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Organization
from apps.demo.budgets import demo_budgets_create
from apps.demo.customers import demo_customer_names_apply
from apps.demo.organization import (
    DEMO_OWNER_EMAIL,
    DEMO_SLUG,
    demo_credentials_create,
    demo_organization_create,
    demo_organization_destroy,
)
from apps.demo.profiles import DEFAULT_SEED
from apps.demo.revenue import demo_revenue_create
from apps.demo.traffic import demo_refusals_record, demo_traffic_write


class Command(BaseCommand):
    help = (
        "Create a demo organization (slug “demo”) with two months of realistic usage for about "
        "50 customers, Stripe revenue, refused-request counts, provider keys (made up) and "
        "tokens, and print its log-in. Refuses when the organization exists; --reset deletes it "
        "first."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--reset", action="store_true", help="Delete an existing demo organization first."
        )
        # Two of the dashboards' 30-day periods: the second has one before it to compare with.
        parser.add_argument("--days", type=int, default=60)
        parser.add_argument("--customers", type=int, default=50)
        parser.add_argument("--events", type=int, default=40_000)
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED)

    @sensitive_variables("password")
    def handle(self, *args, reset, days, customers, events, seed, **options):
        if days < 1 or customers < 1 or events < 0:
            raise CommandError("--days and --customers must be at least 1, --events at least 0.")
        existing = Organization.objects.filter(slug=DEMO_SLUG).first()
        if existing is not None:
            if not reset:
                raise CommandError(
                    f"An organization with the slug {DEMO_SLUG!r} already exists. "
                    "Run with --reset to delete it and create the demo again."
                )
            self.stdout.write(f"Deleting the existing {DEMO_SLUG!r} organization…")
            demo_organization_destroy(organization=existing)

        password = secrets.token_urlsafe(12)
        organization = demo_organization_create(
            slug=DEMO_SLUG, email=DEMO_OWNER_EMAIL, password=password
        )
        token = demo_credentials_create(organization=organization)
        end = timezone.now()
        started = time.monotonic()

        def progress(stored):
            self.stdout.write(f"  {stored:,} of {events:,} events written")

        stored = demo_traffic_write(
            organization=organization,
            days=days,
            customers=customers,
            events=events,
            end=end,
            seed=seed,
            progress=progress,
            token_id=token.pk,
        )
        demo_customer_names_apply(
            organization=organization, customers=customers, days=days, seed=seed
        )
        revenue = demo_revenue_create(organization=organization, end=end, days=days, seed=seed)
        refused = demo_refusals_record(organization=organization, end=end, days=days, seed=seed)
        budgets = demo_budgets_create(organization=organization, end=end)
        self.stdout.write(
            f"Created {organization.slug!r}: {stored:,} events over {days} days for {customers} "
            f"customers in {time.monotonic() - started:.1f} s, "
            f"{revenue['stripe_customers']} Stripe customers with "
            f"{revenue['balance_transactions']} balance transactions, {refused} refused requests, "
            f"{budgets} budgets."
        )
        login = settings.COSTR_BASE_URL.rstrip("/") + reverse("login")
        self.stdout.write(f"Log in at {login}")
        self.stdout.write(f"  e-mail:   {DEMO_OWNER_EMAIL}")
        self.stdout.write(f"  password: {password}")
        self.stdout.write("The password is shown only now; --reset makes a new one.")
