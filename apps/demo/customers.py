"""The demo organization's customers: a few large ones and a long tail, some joining or leaving
during the window, each leaning on one provider and using the features in its own mix."""

from __future__ import annotations

from dataclasses import dataclass

from apps.accounts.models import Organization
from apps.demo.profiles import (
    DEFAULT_SEED,
    FEATURES,
    MODELS,
    ModelProfile,
    cumulative_weights,
    demo_random,
)
from apps.usage.models import Customer

_WORDS = (
    "acme", "northwind", "globex", "initech", "umbrella", "stark", "wayne", "hooli", "vandelay",
    "tyrell", "cyberdyne", "soylent", "wonka", "oscorp", "aperture", "blackmesa", "gringotts",
    "monarch", "pied-piper", "dunder", "prestige", "massive", "sterling", "bluth", "kramerica",
    "nakatomi", "virtucon", "zorg", "abstergo", "octan", "rekall", "spacely", "cogswell", "gekko",
    "duff", "krusty", "lacroix", "mooby", "nimbus", "orbit", "pinnacle", "quantum", "redwood",
    "summit", "tandem", "unity", "vertex", "willow", "yonder", "zenith",
)  # fmt: skip
_SUFFIXES = (
    "labs", "health", "bank", "ai", "io", "legal", "retail", "travel", "energy", "media", "games",
    "logistics",
)  # fmt: skip


@dataclass(frozen=True)
class DemoCustomer:
    external_id: str
    name: str
    weight: float
    first_day: int  # index of the first day it sends traffic
    last_day: int  # index of the last day
    provider: str  # the provider it leans on
    features: tuple[float, ...]  # relative weight of each of FEATURES


def demo_customers(count: int, days: int, seed: int = DEFAULT_SEED) -> list[DemoCustomer]:
    """``count`` customers, biggest first: Zipf weights (a few big ones, a long tail); about one
    in ten joins during the window and one in twenty leaves before its end (never the ten
    biggest, whose absence would look like an outage)."""
    rng = demo_random(f"{seed}:customers")
    names = [f"{word}-{suffix}" for word in _WORDS for suffix in _SUFFIXES]
    rng.shuffle(names)
    if count > len(names):
        names += [f"customer-{index:05d}" for index in range(count - len(names))]
    customers = []
    for rank in range(count):
        external_id = names[rank]
        first_day, last_day = 0, days - 1
        if rank >= 10 and rng.random() < 0.1:
            first_day = rng.randrange(1, max(days - 3, 2))
        elif rank >= 10 and rng.random() < 0.05:
            last_day = rng.randrange(days // 2, days)
        provider = rng.choices(("openai", "anthropic", "google"), (55, 27, 18))[0]
        features = tuple(f.weight * rng.lognormvariate(0, 0.8) for f in FEATURES)
        customers.append(
            DemoCustomer(
                external_id=external_id,
                name=external_id.replace("-", " ")
                .title()
                .replace(" Ai", " AI")
                .replace(" Io", ".io"),
                weight=1 / (rank + 1) ** 1.1,
                first_day=first_day,
                last_day=last_day,
                provider=provider,
                features=features,
            )
        )
    return customers


class CustomerChoices:
    """Per customer, the cumulative weights of its features and, per feature, of its models
    (the models of the provider it leans on count three times)."""

    def __init__(self, customer: DemoCustomer):
        self.features = cumulative_weights(customer.features)
        self.models: list[tuple[list[ModelProfile], list[float]]] = []
        for feature in FEATURES:
            profiles = [MODELS[name] for name in feature.models]
            weights = [
                weight * (3 if MODELS[name].provider == customer.provider else 1)
                for name, weight in feature.models.items()
            ]
            self.models.append((profiles, cumulative_weights(weights)))


def demo_customer_names_apply(
    *, organization: Organization, customers: int, days: int, seed=DEFAULT_SEED
):
    """Give the demo customers display names (the writer knows only their external ids)."""
    names = {c.external_id: c.name for c in demo_customers(customers, days, seed)}
    rows = list(Customer.objects.for_org(organization).filter(external_id__in=list(names)))
    for row in rows:
        row.name = names[row.external_id]
    Customer.objects.for_org(organization).bulk_update(rows, ["name"], batch_size=500)
