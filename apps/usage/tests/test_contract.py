"""What the proxy may import of metering must not pull Django in: the contract, and the provider
usage parsing the proxy shares with the batch poller."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "module", ["apps.usage.metering.contract", "apps.usage.metering.provider_usage"]
)
def test_it_imports_no_django(module):
    probe = (
        f"import sys; import {module}; "
        "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
