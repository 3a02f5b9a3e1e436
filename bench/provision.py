"""Sets up the benchmark's throwaway Costr: migrate, an org, the fake's keys, a proxy token.

Run as ``python -m bench.provision ORG`` with the benchmark's environment (a temporary
``COSTR_VAR_DIR`` and the FAKE keys in ``BENCH_*_KEY``); prints the proxy token on the last line.
It goes through the public management commands, as a self-hoster would.
"""

import io
import os
import sys
from unittest import mock


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    org = sys.argv[1]
    quiet = io.StringIO()
    call_command("migrate", interactive=False, verbosity=0, stdout=quiet)
    call_command("createorg", org, owner_email=f"bench@{org}.example", stdout=quiet)
    for provider in ("openai", "anthropic", "google"):
        key = os.environ[f"BENCH_{provider.upper()}_KEY"]
        with mock.patch("sys.stdin", io.StringIO(key + "\n")):
            call_command("addproviderkey", org, provider, key_stdin=True, stdout=quiet)
    out = io.StringIO()
    call_command("createtoken", org, name="bench", stdout=out)
    print(out.getvalue().strip().splitlines()[-1])


if __name__ == "__main__":
    main()
