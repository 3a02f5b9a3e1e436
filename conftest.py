"""Fixtures every suite shares: people, organizations and memberships in their three roles.

Imports stay inside the fixtures so that pure suites (provider parsers, the vault) also run
without Django.
"""

import pytest


def _membership(organization, role):
    from apps.accounts.tests.factories import MembershipFactory

    return MembershipFactory(organization=organization, role=role)


@pytest.fixture
def password():
    from apps.accounts.tests.factories import PASSWORD

    return PASSWORD


@pytest.fixture
def org(db):
    from apps.accounts.tests.factories import OrganizationFactory

    return OrganizationFactory()


@pytest.fixture
def other_org(db):
    from apps.accounts.tests.factories import OrganizationFactory

    return OrganizationFactory()


@pytest.fixture
def owner(org):
    return _membership(org, "owner").user


@pytest.fixture
def admin(org):
    return _membership(org, "admin").user


@pytest.fixture
def member(org):
    return _membership(org, "member").user


@pytest.fixture
def outsider(other_org):
    """An owner of another organization: signed in, but a stranger to ``org``."""
    return _membership(other_org, "owner").user
