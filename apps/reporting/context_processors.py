"""The chosen period for every page's nav links (templates/base.html), so moving between the
reports keeps it. Pages without a period in their query string get an empty suffix: base.html
never looks up a variable that is not there (a failed lookup is logged with the whole context)."""

from django.http import QueryDict

PERIOD_PARAMETERS = ("period", "start", "end")


def period_links_for(params: QueryDict) -> dict[str, str]:
    """The period in ``params`` as a query string for links: ``period_query`` and
    ``period_suffix`` (the same with its "?", or "" without a period)."""
    kept = QueryDict(mutable=True)
    for key in PERIOD_PARAMETERS:
        values = params.getlist(key)
        if values:
            kept.setlist(key, values)
    query = kept.urlencode()
    return {"period_query": query, "period_suffix": f"?{query}" if query else ""}


def period_links(request) -> dict[str, str]:
    if not any(key in request.GET for key in PERIOD_PARAMETERS):
        return {"period_query": "", "period_suffix": ""}
    return period_links_for(request.GET)
