"""Budgets, limits and alerts (DESIGN.md "Budgets, limits and alerts").

Reading order: ``models`` (what a budget, a webhook and a fired alert are); ``policy`` (a budget
as the proxy holds it, and which budgets a request falls under); ``estimate`` (the upper estimate
of a request's cost that is reserved); ``store`` (spent + reserved per budget and period, in one
Redis script or, embedded, in process memory); ``guard`` (what the proxy calls: reserve before
forwarding, settle when the request ends); ``spend`` (a budget's spend rebuilt from rollups and
events); then the alerts: ``alerts`` (thresholds and anomalies found), ``delivery`` (e-mail,
Slack, signed webhooks) and ``tasks``; and the pages and API.
"""
