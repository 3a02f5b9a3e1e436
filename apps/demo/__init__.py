"""The demo: a made-up organization with a month of realistic usage, customers, Stripe revenue and
refused requests (``manage.py costr_demo``), and the traffic generator the reporting benchmark
uses.

It sits above every other app: it writes into accounts, keys, usage and billing through their
services, as real sign-ups, proxied requests and Stripe syncs would, and nothing imports it but
its own command and tests. In reading order: ``profiles`` (what the traffic is made of),
``customers``, ``traffic`` (usage records and refusals), ``revenue`` (the Stripe mirror) and
``organization`` (the demo organization and its owner).

Nothing is re-exported here: Django imports this package while loading apps, before models can
be imported.
"""
