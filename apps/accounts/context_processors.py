from apps.accounts.selectors import memberships_of_user


def organizations(request):
    """The organizations the signed-in person belongs to, for the switcher in the header."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"user_memberships": memberships_of_user(user=user)}
