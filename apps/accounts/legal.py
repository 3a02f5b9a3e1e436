"""The Data Processing Agreement's versions and the sub-processors a deployment names.

Each version's text is a template under ``templates/legal/`` that is never edited once published:
a change is a new version, and organizations are asked to accept it again.
"""

from dataclasses import dataclass
from datetime import date

from django.conf import settings


@dataclass(frozen=True)
class DpaVersion:
    version: str
    published: date
    template: str


DPA_VERSIONS = (DpaVersion("1.0", date(2026, 11, 23), "legal/dpa/1.0.html"),)
CURRENT_DPA = DPA_VERSIONS[-1]


def dpa_version(version: str) -> DpaVersion | None:
    return next((v for v in DPA_VERSIONS if v.version == version), None)


@dataclass(frozen=True)
class Subprocessor:
    name: str
    purpose: str


def subprocessors() -> list[Subprocessor]:
    """Who processes an organization's data on this deployment's behalf. The AI providers are not
    among them: requests go to them under the organization's own provider accounts and keys."""
    database = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    found = [
        Subprocessor(
            settings.COSTR_HOSTING_PROVIDER,
            f"Hosting of the application, its {_DATABASE_NAMES.get(database, database)} "
            "database" + (" and Redis" if settings.REDIS_URL else "") + ".",
        )
    ]
    found.append(
        Subprocessor(
            "Stripe, Inc.",
            "Only for organizations that connect Stripe: the read-only source of their "
            "customers' revenue.",
        )
    )
    return found


_DATABASE_NAMES = {"postgresql": "PostgreSQL", "sqlite3": "SQLite"}
