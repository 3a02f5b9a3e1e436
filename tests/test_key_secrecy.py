"""Promise 1: a provider key or a Costr token never leaks.

Keys go in the ways people put them in (the settings page, ``addproviderkey``), tokens come out
the ways they are handed out (the tokens page, ``createtoken``), the keys are then used the way
the proxy uses them (resolve a token, decrypt its key); afterwards every place a secret could
end up is searched: every cell of every table, ``dumpdata``, every log record of every logger at
DEBUG, every organization page, the Django cache, the key cache, Celery messages, error pages,
tracebacks and the audit log.

A leak is the secret itself or a form that gives it away: its hex, its base64 at each byte
alignment (what it looks like inside a base64-encoded blob, which is how dumpdata writes binary
columns), or any 12 consecutive characters of its random part. The masked display (the last four
characters) is allowed. Each scanner is itself proven by a test that plants a secret where it
looks and expects it to be found.
"""

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import logging
import pickle
import re
import string
import sys
import traceback
from dataclasses import dataclass
from secrets import choice

import pytest
from asgiref.sync import sync_to_async
from celery import Celery
from celery.signals import before_task_publish, task_prerun
from django.conf import settings
from django.contrib.messages.storage.cookie import CookieStorage
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.core.management import CommandError, call_command
from django.core.signals import got_request_exception
from django.db import connection, connections
from django.http import HttpRequest
from django.urls import reverse
from django.views.debug import ExceptionReporter

from apps.accounts.models import AuditEvent, Membership
from apps.keys import keycache, keyring, services, vault
from apps.keys.models import ProviderKey, ProxyToken
from tests.urlconf import org_page_urls

pytestmark = pytest.mark.django_db

WINDOW = 12  # this many consecutive characters of a secret's random part count as a leak
ALPHABET = string.ascii_letters + string.digits
NEW_TOKEN = re.compile(r'<pre id="new-token">([^<]+)</pre>')


# --- What counts as a leak -------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A secret, and every text whose presence anywhere means it leaked."""

    label: str
    plaintext: str
    forms: dict[str, str]

    def __post_init__(self):
        assert all(self.forms.values()), "an empty form would match everything"

    @classmethod
    def of(cls, label: str, prefix: str, random_part: str) -> "Secret":
        plaintext = prefix + random_part
        forms = {"plaintext": plaintext, **encoded_forms(plaintext.encode())}
        return cls(label, plaintext, forms | windows(random_part))

    @classmethod
    def of_bytes(cls, label: str, data: bytes) -> "Secret":
        """Raw key material: found raw, encoded, or as the repr a traceback prints."""
        forms = {"raw": data.decode("latin-1"), **encoded_forms(data)}
        return cls(label, "", forms | windows(repr(data)[2:-1]))


def encoded_forms(data: bytes) -> dict[str, str]:
    """``data`` as hex, and as base64 (standard and URL-safe) at each of the three alignments it
    can have inside a longer blob, trimmed to the characters its neighbours cannot change."""
    forms = {"hex": data.hex()}
    for offset in range(3):
        for name, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * offset + data).decode()
            forms[f"{name}@{offset}"] = encoded[(4 * offset + 2) // 3 : -4]
    return forms


def windows(text: str) -> dict[str, str]:
    return {f"chars {i}-{i + WINDOW}": text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


def random_chars(length: int) -> str:
    return "".join(choice(ALPHABET) for _ in range(length))


def openai_key() -> Secret:
    return Secret.of("OpenAI key", "sk-proj-", random_chars(40))


def anthropic_key() -> Secret:
    return Secret.of("Anthropic key", "sk-ant-api03-", random_chars(60))


def google_key() -> Secret:
    return Secret.of("Google key", "AIza", random_chars(35))


def token_secret(plaintext: str) -> Secret:
    return Secret.of("Costr token", services.TOKEN_PREFIX, plaintext[len(services.TOKEN_PREFIX) :])


def keyring_secrets() -> list[Secret]:
    """The key-encryption keys: one of them plus a database dump gives away every key."""
    found = []
    for entry in settings.COSTR_ENCRYPTION_KEYS.split(","):
        key_id, _, material = (part.strip() for part in entry.partition(":"))
        found.append(Secret.of(f"encryption key {key_id}", "", material))
        found.append(Secret.of_bytes(f"encryption key {key_id} bytes", base64.b64decode(material)))
    return found


def as_texts(value) -> list[str]:
    """Bytes are read as latin-1 (byte for byte, so a raw-bytes match) and as UTF-8."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return [raw.decode("latin-1"), raw.decode("utf-8", errors="replace")]
    return [value if isinstance(value, str) else str(value)]


def find_leaks(sources, secrets) -> list[tuple[str, str]]:
    """(where, which secret in which form) for every leak in ``sources``, (where, value) pairs."""
    found = []
    for where, value in sources:
        texts = as_texts(value)
        for secret in secrets:
            for name, form in secret.forms.items():
                if any(form in text for text in texts):
                    found.append((where, f"{secret.label} ({name})"))
    return found


def assert_no_leak(sources, secrets):
    found = find_leaks(sources, secrets)
    places = sorted({where for where, _ in found})
    assert not found, f"{len(found)} leak(s) in {places[:10]}; first: {found[:5]}"


def leaves(value):
    """Every scalar inside dataclasses, mappings and collections, keys included."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from leaves(getattr(value, field.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(key)
            yield from leaves(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from leaves(item)
    else:
        yield value


# --- Where secrets could end up --------------------------------------------------------------


def database_cells():
    """(table.column, value) for every cell of every table, so new tables are covered unasked,
    and sessions decoded (session data is signed and may be compressed, hiding what it holds)."""
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            columns = [column[0] for column in cursor.description]
            for row in cursor.fetchall():
                yield from ((f"{table}.{c}", v) for c, v in zip(columns, row, strict=True))
    for session in Session.objects.all():
        yield "django_session (decoded)", session.get_decoded()


def dumpdata() -> str:
    out = io.StringIO()
    call_command("dumpdata", "--all", "--format=json", stdout=out)
    return out.getvalue()


def _unpickled(value):
    try:
        return pickle.loads(value)  # noqa: S301 -- values this test process wrote itself
    except Exception:
        return None


def redis_value(client, key):
    kind = client.type(key).decode()
    read = {
        "string": client.get,
        "hash": client.hgetall,
        "list": lambda k: client.lrange(k, 0, -1),
        "set": client.smembers,
        "zset": lambda k: client.zrange(k, 0, -1),
        "stream": client.xrange,
    }
    return read[kind](key) if kind in read else None


def cache_entries():
    """(where, (key, stored value, unpickled value)) for everything in every configured cache.
    With Redis, every key of its database: the cache (KEY_PREFIX included), and whatever else
    Costr keeps there (last-use times, the usage event stream, Celery queues)."""
    for alias in settings.CACHES:
        backend = caches[alias]
        if isinstance(backend, LocMemCache):
            stored = list(backend._cache.items())
        elif isinstance(backend, RedisCache):
            client = backend._cache.get_client()
            stored = [(key, redis_value(client, key)) for key in client.scan_iter(count=1000)]
        else:
            pytest.fail(f"no way to look inside a {type(backend).__name__} cache")
        for key, value in stored:
            unpickled = _unpickled(value) if isinstance(value, bytes) else None
            yield f"cache {alias} {key!r}", (key, value, unpickled)


def keycache_contents():
    """Every entry of this process's key cache: its repr and each value inside it."""
    with keycache._lock:
        entries = dict(keycache._entries)
    for token_hash, entry in entries.items():
        yield f"keycache {token_hash[:8]}", repr(entry)
        yield from ((f"keycache {token_hash[:8]}", leaf) for leaf in leaves((token_hash, entry)))


def response_sources(where, response):
    """Body, headers and cookies; the messages cookie also decoded (it is signed, may be
    compressed)."""
    body = b"".join(response.streaming_content) if response.streaming else response.content
    sources = [
        (f"{where} body", body),
        (f"{where} headers", str(list(response.items()))),
    ]
    for morsel in response.cookies.values():
        sources.append((f"{where} cookie {morsel.key}", morsel.OutputString()))
        if morsel.key == CookieStorage.cookie_name and morsel.value:
            decoded = CookieStorage(HttpRequest())._decode(morsel.value)
            sources.append((f"{where} messages", [str(message) for message in decoded or []]))
    return sources


class LogRecorder(logging.Handler):
    """Keeps each record as the text a handler would write, plus all its attributes (the SQL
    parameters Django logs travel in ``args`` and ``extra``)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.sources = []
        self.exceptions = []  # logged with exc_info: what an error-reporting handler would report

    def emit(self, record):
        self.sources.append((f"log {record.name}", f"{self.format(record)}\n{vars(record)}"))
        if record.exc_info and record.exc_info[1] is not None:
            self.exceptions.append(record.exc_info[1])


# --- Fixtures --------------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def debug(request, settings):
    """DEBUG off (production) and on (the embedded default: Django then logs every query with
    its parameters and answers errors with its technical page)."""
    settings.DEBUG = request.param
    return request.param


@pytest.fixture
def log_recorder(debug, caplog):
    """Every record of every logger at DEBUG, from before the test's flows run."""
    recorder = LogRecorder()
    caplog.set_level(logging.DEBUG)
    loggers = [logging.getLogger()]
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
        if not logging.getLogger(name).propagate:  # its records never reach the root
            loggers.append(logging.getLogger(name))
    for logger in loggers:
        logger.addHandler(recorder)
    yield recorder
    for logger in loggers:
        logger.removeHandler(recorder)


@pytest.fixture
def logs(log_recorder):
    return log_recorder.sources


@pytest.fixture
def celery_messages():
    """What any task carried while the test ran: published to a broker, or run eagerly."""
    captured = []

    def on_publish(sender=None, body=None, headers=None, properties=None, **_):
        captured.append((f"published {sender}", repr((body, headers, properties))))

    def on_run(sender=None, args=None, **signal_kwargs):
        captured.append((f"ran {sender.name}", repr((args, signal_kwargs.get("kwargs")))))

    before_task_publish.connect(on_publish, weak=False, dispatch_uid="key-secrecy-publish")
    task_prerun.connect(on_run, weak=False, dispatch_uid="key-secrecy-run")
    yield captured
    before_task_publish.disconnect(on_publish, dispatch_uid="key-secrecy-publish")
    task_prerun.disconnect(on_run, dispatch_uid="key-secrecy-run")


def add_key_by_command(monkeypatch, org, provider: str, key: Secret, label="cli") -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(key.plaintext + "\n"))
    out = io.StringIO()
    call_command(
        "addproviderkey", org.slug, provider, "--key-stdin", f"--label={label}", stdout=out
    )
    return out.getvalue()


def post_key(client, org, provider: str, key: Secret, label=""):
    data = {"provider": provider, "label": label, "key": key.plaintext}
    return client.post(reverse("provider_keys", args=[org.slug]), data)


@dataclass
class Stored:
    keys: dict[str, Secret]
    tokens: list[Secret]
    outputs: list  # what the flows showed: pages, redirects, command output
    token_outputs: list  # the two places a new token is shown, once, on purpose
    token_response: object

    @property
    def secrets(self) -> list[Secret]:
        return [*self.keys.values(), *self.tokens, *keyring_secrets()]


@pytest.fixture
def stored(client, org, admin, logs, celery_messages, monkeypatch) -> Stored:
    """Keys added on the page and by command, tokens made on the page and by command, then
    every token resolved and every key decrypted as the proxy does."""
    client.force_login(admin)
    keys = {"openai": openai_key(), "google": google_key(), "spare": openai_key()}
    outputs = []
    for role, provider in (("openai", "openai"), ("google", "google"), ("spare", "openai")):
        response = post_key(client, org, provider, keys[role], label=f"{role} label")
        assert response.status_code == 302, response.content
        outputs += response_sources(f"POST {role} key", response)
        outputs += response_sources(f"page after POST {role} key", client.get(response["Location"]))
    keys["anthropic"] = anthropic_key()
    output = add_key_by_command(monkeypatch, org, "anthropic", keys["anthropic"])
    outputs.append(("addproviderkey output", output))

    posted = client.post(reverse("tokens", args=[org.slug]), {"name": "ci", "scopes": ["proxy"]})
    assert posted.status_code == 302, posted.content
    # The POST only redirects (a reload creates no second token); its answer shows no secret.
    outputs += response_sources("POST token", posted)
    response = client.get(posted["Location"])
    assert response.status_code == 200, response.content
    out = io.StringIO()
    call_command("createtoken", org.slug, stdout=out)
    tokens = [
        token_secret(NEW_TOKEN.search(response.content.decode())[1]),
        token_secret(out.getvalue().strip().splitlines()[-1]),
    ]
    token_outputs = [
        *response_sources("page after POST token", response),
        ("createtoken output", out.getvalue()),
    ]

    for token in tokens:
        resolved = keycache.resolve(services.token_hash(token.plaintext))
        for provider in ("openai", "google", "anthropic"):
            plaintext = keycache.provider_key_plaintext(resolved, provider)
            assert plaintext == keys[provider].plaintext
    return Stored(keys, tokens, outputs, token_outputs, response)


# --- 1. Keys added on the page and by command leak nowhere ---------------------------------


def test_dumpdata_holds_no_secret(stored):
    dump = dumpdata()

    assert dump.count('"model": "keys.providerkey"') == 4
    assert_no_leak([("dumpdata", dump)], stored.secrets)


def test_no_database_cell_holds_a_secret(stored):
    cells = list(database_cells())

    walked = {where.split(".")[0] for where, _ in cells}
    assert {ProviderKey._meta.db_table, ProxyToken._meta.db_table} <= walked
    assert AuditEvent._meta.db_table in walked
    ciphertexts = [v for where, v in cells if where == f"{ProviderKey._meta.db_table}.ciphertext"]
    assert len(ciphertexts) == 4
    assert all(len(bytes(ciphertext)) > 60 for ciphertext in ciphertexts)
    assert_no_leak(cells, stored.secrets)


def test_no_log_record_holds_a_secret(stored, logs, debug):
    if debug:  # the capture really sees the SQL Django logs, parameters included
        assert any("INSERT INTO" in text and "keys_providerkey" in text for _, text in logs)
    assert_no_leak(logs, stored.secrets)


def test_no_organization_page_shows_a_secret(stored, client, org):
    ids = [
        *ProviderKey.objects.for_org(org).values_list("pk", flat=True),
        *ProxyToken.objects.for_org(org).values_list("pk", flat=True),
        *Membership.objects.for_org(org).values_list("pk", flat=True),
    ]
    sources, statuses = [], {}
    for url in org_page_urls(org.slug, ids):
        response = client.get(url)
        statuses[url] = response.status_code
        sources += response_sources(f"GET {url}", response)

    assert all(status < 500 for status in statuses.values()), statuses
    first_key = ProviderKey.objects.for_org(org).first()
    assert statuses[reverse("provider_keys", args=[org.slug])] == 200
    assert statuses[reverse("provider_key_delete", args=[org.slug, first_key.pk])] == 200
    assert statuses[reverse("tokens", args=[org.slug])] == 200
    assert_no_leak([*sources, *stored.outputs], stored.secrets)
    assert_no_leak(stored.token_outputs, [*stored.keys.values(), *keyring_secrets()])


def test_the_django_cache_holds_no_secret(stored):
    assert_no_leak(list(cache_entries()), stored.secrets)


def test_the_key_cache_holds_ciphertext_only(stored, org):
    for token in stored.tokens:
        token_hash = services.token_hash(token.plaintext)
        # Another process's invalidation message may empty the cache at any moment: retry.
        for _ in range(3):
            resolved = keycache.resolve(token_hash)
            entry = keycache._entries.get(token_hash)
            if entry is not None:
                break
        assert entry is not None and entry[1] == resolved
        assert set(resolved.provider_keys) == {"openai", "google", "anthropic"}
        for provider, ref in resolved.provider_keys.items():
            stored_row = ProviderKey.objects.for_org(org).get(secret_id=ref.secret_id)
            assert ref.ciphertext == bytes(stored_row.ciphertext), provider

    assert_no_leak(list(keycache_contents()), stored.secrets)


def test_no_celery_message_carries_a_secret(stored, celery_messages):
    # No flow queues a task yet: this guard catches the first one that would carry a secret.
    assert before_task_publish.has_listeners() and task_prerun.has_listeners()
    assert_no_leak(celery_messages, stored.secrets)


# --- 2. Error pages, tracebacks and refused input --------------------------------------------


def _fail(*_args, **_kwargs):
    raise RuntimeError("injected failure")


@pytest.fixture
def view_error_reports():
    """Django's full report of each exception a view raises (HTML with frame variables and POST
    data, filtered as Django filters them): what the technical page or an HTML error mail shows."""
    reports = []

    def report(sender, request=None, **_):
        reporter = ExceptionReporter(request, *sys.exc_info())
        reports.append(("error report html", reporter.get_traceback_html()))
        reports.append(("error report text", reporter.get_traceback_text()))

    got_request_exception.connect(report, dispatch_uid="key-secrecy-report")
    yield reports
    got_request_exception.disconnect(dispatch_uid="key-secrecy-report")


@pytest.mark.parametrize(
    "target",
    [
        "apps.keys.keyring.get_keyring",  # inside seal(), which holds the plaintext
        "apps.keys.vault._data_aad",  # inside vault.encrypt(): plaintext and data key in hand
        "apps.keys.services.audit_event_record",  # after sealing, in provider_key_create()
    ],
)
def test_a_500_while_saving_a_key_shows_no_secret(
    client, org, admin, debug, logs, view_error_reports, mailoutbox, settings, monkeypatch, target
):
    settings.ADMINS = [("Ops", "ops@example.com")]  # so errors are mailed (with DEBUG off)
    key = openai_key()
    client.force_login(admin)
    client.raise_request_exception = False
    monkeypatch.setattr(target, _fail)

    response = post_key(client, org, "openai", key)

    assert response.status_code == 500
    assert len(view_error_reports) == 2
    assert len(mailoutbox) == (0 if debug else 1)
    if debug:  # the technical page, with the frames that hold the key
        assert b"injected failure" in response.content
        assert b"provider_key_create" in response.content
    mails = [(f"mail {m.subject}", m.message().as_string()) for m in mailoutbox]
    sources = [*response_sources("500", response), *view_error_reports, *logs, *mails]
    assert_no_leak(sources, [key, *keyring_secrets()])


def _then_fail(function):
    def call_then_fail(*args, **kwargs):
        function(*args, **kwargs)  # the result, a plaintext, is dropped without a name
        raise RuntimeError("injected failure after the call")

    return call_then_fail


@contextlib.contextmanager
def raising_inside(function, variable: str):
    """Make ``function`` raise from within as soon as its frame holds ``variable``: the moment
    a real failure would be most revealing. Yields a list that is non-empty once it fired."""
    code = inspect.unwrap(function).__code__
    fired = []

    def tracer(frame, event, _arg):
        if frame.f_code is not code:
            return None
        if event == "line" and variable in frame.f_locals:
            fired.append(variable)
            raise RuntimeError(f"injected failure while {variable} is held")
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def error_report(call) -> ExceptionReporter:
    """Django's report (500 page, error mail) of what ``call`` raises."""
    try:
        call()
    except RuntimeError:
        return ExceptionReporter(None, *sys.exc_info())
    pytest.fail("the injected failure did not happen")


def data_key_of(ref, organization_id) -> bytes:
    context = vault.Context(
        org_id=organization_id, record_id=ref.secret_id, purpose=ProviderKey.VAULT_PURPOSE
    )
    return vault._unwrap_data_key(vault._unpack(ref.ciphertext), context, keyring.get_keyring())


@pytest.mark.parametrize(
    "failure", ["while the plaintext is held", "after open_secret", "inside vault.decrypt"]
)
def test_a_traceback_from_decrypting_a_key_shows_no_secret(org, admin, debug, monkeypatch, failure):
    # Called directly, one injection point at a time; the proxy tests below go through a request.
    key = openai_key()
    services.provider_key_create(
        organization=org, provider="openai", key=key.plaintext, actor=admin
    )
    token = services.proxy_token_create(organization=org, name="p", scopes=["proxy"], actor=admin)
    resolved = keycache.resolve(services.token_hash(token.plaintext))
    data_key = data_key_of(resolved.provider_keys["openai"], org.pk)
    injected = contextlib.nullcontext()
    if failure == "while the plaintext is held":
        injected = raising_inside(keycache.provider_key_plaintext, "plaintext")
    elif failure == "after open_secret":
        monkeypatch.setattr(keyring, "open_secret", _then_fail(keyring.open_secret))
    else:
        monkeypatch.setattr(vault, "_data_aad", _fail)

    with injected:
        report = error_report(
            functools.partial(keycache.provider_key_plaintext, resolved, "openai")
        )

    frame_values = [
        (f"frame {frame['function']} {name}", leaf)
        for frame in report.get_traceback_frames()
        for name, value in frame["vars"]
        for leaf in [value, *leaves(value)]
    ]
    assert "provider_key_plaintext" in report.get_traceback_text()
    secrets = [key, Secret.of_bytes("data key", data_key), *keyring_secrets()]
    pages = [("html", report.get_traceback_html()), ("text", report.get_traceback_text())]
    assert_no_leak([*pages, *frame_values], secrets)


def _proxy_scope(org, token: Secret) -> dict:
    path = f"/p/{org.slug}/openai/v1/chat/completions"
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token.plaintext}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def call_asgi(app, scope, body: bytes):
    """One request through an ASGI app: (messages sent back, exception that escaped or None).
    The escaped exception's traceback starts below this frame, which holds the request."""
    incoming = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent = []

    async def receive():
        return next(incoming, {"type": "http.disconnect"})

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    except Exception as error:
        return sent, error.with_traceback(error.__traceback__.tb_next)
    return sent, None


@pytest.fixture
def proxy_failure(transactional_db, org, admin, debug, log_recorder):
    """A chat request through the proxy that fails while the proxy holds the decrypted key.
    Rows are committed (transactional_db): the proxy loads tokens in a worker thread."""
    from costr.asgi import application

    key = openai_key()
    services.provider_key_create(
        organization=org, provider="openai", key=key.plaintext, actor=admin
    )
    created = services.proxy_token_create(organization=org, name="p", scopes=["proxy"], actor=admin)
    token = token_secret(created.plaintext)
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})

    with raising_inside(keycache.provider_key_plaintext, "plaintext") as fired:
        sent, escaped = call_asgi(application, _proxy_scope(org, token), body.encode())
    # The proxy's database thread keeps its connection; close it so the test database can go.
    asyncio.run(sync_to_async(connections.close_all)())

    assert fired, "the proxy never decrypted the key"
    reportable = [escaped] if escaped is not None else log_recorder.exceptions
    return [key, token, *keyring_secrets()], sent, escaped, reportable


def test_a_proxy_failure_holding_the_key_leaks_nothing_to_client_or_logs(proxy_failure, logs):
    secrets, sent, escaped, _ = proxy_failure
    sources = [("sent to the client", repr(sent)), *logs]
    if escaped is not None:  # what the ASGI server logs
        sources.append(("server traceback", "".join(traceback.format_exception(escaped))))
    assert_no_leak(sources, secrets)


def test_a_proxy_failure_holding_the_key_leaks_nothing_to_an_error_report(proxy_failure):
    # What a reporter with frame variables (Django's, as in error mails) would show of the
    # exception that escaped the proxy, or that the proxy logged with its traceback.
    secrets, _, _, reportable = proxy_failure
    if not reportable:
        pytest.skip("the failure neither escaped nor was logged with a traceback")
    error = reportable[0]
    report = ExceptionReporter(None, type(error), error, error.__traceback__)
    frame_values = [
        (f"frame {frame['function']} {name}", leaf)
        for frame in report.get_traceback_frames()
        for name, value in frame["vars"]
        for leaf in [value, *leaves(value)]
    ]
    pages = [
        ("report html", report.get_traceback_html()),
        ("report text", report.get_traceback_text()),
    ]
    assert_no_leak([*pages, *frame_values], secrets)


REFUSALS = {
    "already stored": ("openai", openai_key, True),
    "another provider's key": ("anthropic", openai_key, False),
    "malformed": ("google", lambda: Secret.of("malformed key", "AIza", random_chars(36)), False),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_key_is_not_sent_back(client, org, admin, debug, logs, case):
    provider, make_key, store_first = REFUSALS[case]
    key = make_key()
    if store_first:
        services.provider_key_create(
            organization=org, provider=provider, key=key.plaintext, actor=admin
        )
    client.force_login(admin)

    response = post_key(client, org, provider, key)

    assert response.status_code == 400
    assert b'class="errorlist' in response.content and b'name="key"' in response.content
    assert_no_leak([*response_sources("refusal", response), *logs], [key])


def test_addproviderkey_never_repeats_the_key(org, monkeypatch):
    key = openai_key()
    output = add_key_by_command(monkeypatch, org, "openai", key)

    with pytest.raises(CommandError) as refusal:
        add_key_by_command(monkeypatch, org, "openai", key)

    assert "already stored" in str(refusal.value)
    assert_no_leak([("stored", output), ("refused", str(refusal.value))], [key])


# --- 4. Tokens are shown once and stored as a hash -------------------------------------------


def test_a_token_is_shown_once_and_stored_only_as_its_sha256(stored, client, org):
    page_token = stored.tokens[0]  # the other came from createtoken
    created = stored.token_response
    assert "no-store" in created["Cache-Control"]
    assert NEW_TOKEN.search(created.content.decode())[1] == page_token.plaintext

    cells, dump = list(database_cells()), dumpdata()
    stored_hashes = {v for where, v in cells if where == f"{ProxyToken._meta.db_table}.token_hash"}
    for token in stored.tokens:
        sha256 = hashlib.sha256(token.plaintext.encode()).hexdigest()
        assert sha256 in stored_hashes and sha256 in dump
    assert_no_leak([*cells, ("dumpdata", dump)], stored.tokens)

    reloaded = client.get(reverse("tokens", args=[org.slug]))
    assert reloaded.status_code == 200
    assert page_token.plaintext[: services.TOKEN_DISPLAY_LENGTH] in reloaded.content.decode()
    assert_no_leak(response_sources("tokens page", reloaded), stored.tokens)


# --- 5. The audit log records changes, not secrets -------------------------------------------


def test_audit_events_record_each_key_and_token_without_the_secret(stored, org):
    events = list(AuditEvent.objects.for_org(org))
    created = [event for event in events if event.action == "provider_key.created"]

    assert len(created) == 4
    assert sorted(event.details["provider"] for event in created) == sorted(
        ["openai", "openai", "google", "anthropic"]
    )
    assert [event.action for event in events].count("token.created") == 2
    rows = [
        (f"audit {event.action}", {f.attname: getattr(event, f.attname) for f in fields})
        for event in events
        for fields in [event._meta.concrete_fields]
    ]
    details = [(f"audit details {event.action}", json.dumps(event.details)) for event in events]
    assert_no_leak([*rows, *details], stored.secrets)


# --- The scanners catch what they look for ---------------------------------------------------


def test_the_database_scanners_find_planted_secrets(org, admin):
    key, other = openai_key(), google_key()
    row = services.provider_key_create(
        organization=org, provider="openai", key=key.plaintext, actor=admin
    )
    assert not find_leaks(database_cells(), [key, other])
    ProviderKey.objects.for_org(org).filter(pk=row.pk).update(
        label=other.plaintext[-WINDOW - 3 : -3],  # twelve characters of a key, in a text column
        ciphertext=b"\x01" + key.plaintext.encode(),  # a whole key, in a binary column
    )
    session = SessionStore()
    session["compressed"] = other.plaintext * 20
    session.save()

    sites = {where for where, _ in find_leaks(database_cells(), [key, other])}
    assert {"keys_providerkey.label", "keys_providerkey.ciphertext"} <= sites
    assert "django_session (decoded)" in sites
    # dumpdata writes the binary column as base64, the key at byte offset 1 in it
    assert ("dumpdata", "OpenAI key (base64@1)") in find_leaks([("dumpdata", dumpdata())], [key])


def test_the_cache_scanner_finds_a_planted_secret():
    key = openai_key()
    cache.set("key-secrecy-probe", {"nested": [key.plaintext]}, 60)
    try:
        assert find_leaks(cache_entries(), [key])
    finally:
        cache.delete("key-secrecy-probe")


def test_the_log_capture_finds_a_planted_secret(logs, debug):
    key = openai_key()
    logging.getLogger("costr.key_secrecy_probe").debug("probe %s", key.plaintext[5:30])
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s", [key.plaintext])

    sites = {where for where, _ in find_leaks(logs, [key])}
    assert "log costr.key_secrecy_probe" in sites
    assert ("log django.db.backends" in sites) == debug


def test_the_page_scanner_finds_a_planted_secret(client, org, admin):
    key = openai_key()
    services.provider_key_create(
        organization=org, provider="google", key=google_key().plaintext, actor=admin, label="x"
    )
    ProviderKey.objects.for_org(org).update(label=key.plaintext[10 : 10 + WINDOW])
    client.force_login(admin)

    response = client.get(reverse("provider_keys", args=[org.slug]))

    assert find_leaks(response_sources("keys page", response), [key])


def test_the_key_cache_walk_finds_a_planted_secret():
    key = openai_key()
    entry = keycache.ResolvedToken(
        token_id=1,
        organization_id=1,
        organization_slug="acme",
        scopes=frozenset({"proxy"}),
        expires_at=None,
        provider_keys={"openai": keycache.ProviderKeyRef("s", b"\0" + key.plaintext.encode())},
    )

    assert find_leaks([("entry", leaf) for leaf in leaves(entry)], [key])


def test_the_celery_guard_sees_published_and_eager_tasks(celery_messages):
    key = openai_key()
    probe = Celery("key-secrecy-probe", broker="memory://", set_as_current=False)
    probe.conf.task_always_eager = True

    @probe.task(name="key_secrecy_probe")
    def leak(value):
        return None

    try:
        leak.delay(key.plaintext)  # eager, as the embedded mode and the tests run tasks
        probe.conf.task_always_eager = False
        probe.send_task("key_secrecy_probe", args=[key.plaintext])  # to a broker
    finally:
        probe.close()

    sites = {where for where, _ in find_leaks(celery_messages, [key])}
    assert sites == {"ran key_secrecy_probe", "published key_secrecy_probe"}


# --- 6. The Stripe key -----------------------------------------------------------------------


def stripe_key() -> Secret:
    return Secret.of("Stripe key", "rk_test_", random_chars(60))


def post_stripe_key(client, org, key: Secret):
    data = {"key": key.plaintext, "metadata_field": "costr_customer_id"}
    return client.post(reverse("stripe_settings", args=[org.slug]), data)


@dataclass
class StoredStripe:
    keys: list[Secret]
    outputs: list

    @property
    def secrets(self) -> list[Secret]:
        return [*self.keys, *keyring_secrets()]


@pytest.fixture
def stripe_stored(
    client,
    org,
    other_org,
    admin,
    fake_stripe,
    logs,
    celery_messages,
    monkeypatch,
    django_capture_on_commit_callbacks,
) -> StoredStripe:
    """A Stripe key connected on the page (org) and one by `connectstripe` (other_org), each
    first sync run, a sync requested with the button and one by `syncstripe`, and a secret key
    refused on the page."""
    account = fake_stripe.account()
    customer = account.customer(email="a@example.com", metadata={"costr_customer_id": "a"})
    account.refund(account.charge(customer, 5000), 1000)
    keys = [stripe_key(), stripe_key()]
    for key in keys:
        fake_stripe.restricted_key(account, key=key.plaintext)
    client.force_login(admin)
    outputs = []
    with django_capture_on_commit_callbacks(execute=True):
        response = post_stripe_key(client, org, keys[0])
    assert response.status_code == 302, response.content
    outputs += response_sources("POST stripe key", response)
    outputs += response_sources("page after POST", client.get(response["Location"]))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("stripe_sync", args=[org.slug]))
    outputs += response_sources("POST sync", response)

    monkeypatch.setattr(sys, "stdin", io.StringIO(keys[1].plaintext + "\n"))
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("connectstripe", other_org.slug, "--key-stdin", stdout=out)
    call_command("syncstripe", other_org.slug, stdout=out)
    outputs.append(("connectstripe and syncstripe output", out.getvalue()))

    from apps.billing.models import StripeConnection

    for organization in (org, other_org):
        connection = StripeConnection.objects.for_org(organization).get()
        assert connection.sync_status == "ok", connection.last_error
    assert fake_stripe.writes() == []
    return StoredStripe(keys, outputs)


def test_the_stripe_key_is_in_no_cell_dump_log_cache_or_task(stripe_stored, logs, celery_messages):
    from apps.billing.models import StripeConnection

    cells = list(database_cells())
    ciphertexts = [
        v for where, v in cells if where == f"{StripeConnection._meta.db_table}.ciphertext"
    ]

    assert len(ciphertexts) == 2
    assert any(where.startswith("billing_stripebalancetransaction.") for where, _ in cells)
    assert any(name.startswith("ran billing.stripe_sync") for name, _ in celery_messages)
    assert_no_leak(
        [*cells, ("dumpdata", dumpdata()), *logs, *cache_entries(), *celery_messages],
        stripe_stored.secrets,
    )


def test_no_organization_page_shows_the_stripe_key(stripe_stored, client, org):
    from apps.billing.models import StripeCustomer

    ids = list(StripeCustomer.objects.for_org(org).values_list("pk", flat=True))
    sources, statuses = [], {}
    for url in org_page_urls(org.slug, ids):
        response = client.get(url)
        statuses[url] = response.status_code
        sources += response_sources(f"GET {url}", response)

    assert all(status < 500 for status in statuses.values()), statuses
    assert statuses[reverse("stripe_settings", args=[org.slug])] == 200
    assert statuses[reverse("stripe_disconnect", args=[org.slug])] == 200
    assert statuses[reverse("stripe_customers", args=[org.slug])] == 200
    assert_no_leak([*sources, *stripe_stored.outputs], stripe_stored.secrets)


def test_audit_events_of_stripe_name_the_key_only_masked(stripe_stored, org, other_org):
    events = [
        event
        for organization in (org, other_org)
        for event in AuditEvent.objects.for_org(organization).filter(action__startswith="stripe.")
    ]

    assert sorted(event.action for event in events) == [
        "stripe.connected",
        "stripe.connected",
        "stripe.sync_requested",
    ]
    rows = [(f"audit {e.action}", f"{e.target} {json.dumps(e.details)}") for e in events]
    assert_no_leak(rows, stripe_stored.secrets)


@pytest.mark.parametrize("prefix", ["sk_live_", "sk_test_", "rk_test_"])
def test_a_refused_stripe_key_is_not_sent_back(
    client, org, admin, fake_stripe, debug, logs, prefix
):
    # sk_ keys are refused by their format; the rk_ one by Stripe, which does not know it.
    key = Secret.of("refused Stripe key", prefix, random_chars(60))
    client.force_login(admin)

    response = post_stripe_key(client, org, key)

    assert response.status_code == 400
    assert b'class="errorlist' in response.content
    assert_no_leak([*response_sources("refusal", response), *logs], [key])


def test_a_500_while_connecting_stripe_shows_no_key(
    client,
    org,
    admin,
    fake_stripe,
    debug,
    logs,
    view_error_reports,
    mailoutbox,
    settings,
    monkeypatch,
):
    settings.ADMINS = [("Ops", "ops@example.com")]
    key = stripe_key()
    fake_stripe.restricted_key(fake_stripe.account(), key=key.plaintext)
    client.force_login(admin)
    client.raise_request_exception = False
    monkeypatch.setattr("apps.billing.services.audit_event_record", _fail)  # after sealing

    response = post_stripe_key(client, org, key)

    assert response.status_code == 500
    assert len(view_error_reports) == 2
    if debug:
        assert b"stripe_connect" in response.content
    mails = [(f"mail {m.subject}", m.message().as_string()) for m in mailoutbox]
    sources = [*response_sources("500", response), *view_error_reports, *logs, *mails]
    assert_no_leak(sources, [key, *keyring_secrets()])


@pytest.mark.parametrize("where", ["while the SDK sends a request", "while the sync holds the key"])
def test_a_sync_failing_with_the_key_in_hand_reports_no_key(
    org, admin, fake_stripe, debug, log_recorder, logs, monkeypatch, where
):
    from apps.billing import client as stripe_client
    from apps.billing import services as billing
    from apps.billing import sync

    key = stripe_key()
    fake_stripe.restricted_key(fake_stripe.account(), key=key.plaintext)
    billing.stripe_connect(organization=org, key=key.plaintext, actor=admin)
    if where == "while the SDK sends a request":
        monkeypatch.setattr(stripe_client.ReadOnlyHTTPClient, "request", _fail)
        injected = contextlib.nullcontext()
    else:
        injected = raising_inside(sync._sync_connection, "api")

    with injected:
        result = sync.stripe_sync(organization_id=org.pk)

    assert result.status == "failed"
    assert log_recorder.exceptions, "the failure was not logged with its traceback"
    error = log_recorder.exceptions[-1]
    report = ExceptionReporter(None, type(error), error, error.__traceback__)
    frame_values = [
        (f"frame {frame['function']} {name}", leaf)
        for frame in report.get_traceback_frames()
        for name, value in frame["vars"]
        for leaf in [value, *leaves(value)]
    ]
    pages = [("html", report.get_traceback_html()), ("text", report.get_traceback_text())]
    assert len(frame_values) > 5
    assert_no_leak([*pages, *frame_values, *logs], [key, *keyring_secrets()])
