"""The fake provider's batches: OpenAI files and ``/v1/batches``, Anthropic
``/v1/messages/batches``, in the wire formats the official SDKs read.

Routes (any path prefix before ``/v1/``, as for the rest of the fake):
    openai     POST /v1/files (multipart: purpose, file), GET /v1/files/{id},
               GET /v1/files/{id}/content, POST /v1/batches, GET /v1/batches,
               GET /v1/batches/{id}, POST /v1/batches/{id}/cancel
    anthropic  POST /v1/messages/batches, GET /v1/messages/batches,
               GET /v1/messages/batches/{id}, POST /v1/messages/batches/{id}/cancel,
               GET /v1/messages/batches/{id}/results (once ended)

A batch stays in progress until the test ends it with ``FakeBatches.complete``, which says what
becomes of each item (succeeded by default; ``errored``, ``expired``, ``canceled`` by custom_id)
and may pad each answer's text (``text_bytes``) to make a large results file. Results files are
generated line by line as they are sent, never held whole. Each succeeded item's body is the
fake's usual answer for its endpoint and model (``provider._build``), with its usage (the
request's ``x-fake-usage`` knob does not reach batch items: ``usage`` here sets it).

An Anthropic batch's ``results_url`` is absolute, at the origin the request reached (the real
API answers ``https://api.anthropic.com/v1/messages/batches/{id}/results``).

``unavailable`` (a count) makes that many of the next batch or file requests answer 503, as a
provider having trouble would.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes import provider as fake

_ROUTES = (
    (re.compile(r"/v1/files$"), "files"),
    (re.compile(r"/v1/files/([^/]+)$"), "file"),
    (re.compile(r"/v1/files/([^/]+)/content$"), "file_content"),
    (re.compile(r"/v1/batches$"), "openai_batches"),
    (re.compile(r"/v1/batches/([^/]+)$"), "openai_batch"),
    (re.compile(r"/v1/batches/([^/]+)/cancel$"), "openai_cancel"),
    (re.compile(r"/v1/messages/batches$"), "anthropic_batches"),
    (re.compile(r"/v1/messages/batches/([^/]+)$"), "anthropic_batch"),
    (re.compile(r"/v1/messages/batches/([^/]+)/cancel$"), "anthropic_cancel"),
    (re.compile(r"/v1/messages/batches/([^/]+)/results$"), "anthropic_results"),
)
RESULTS_CHUNK_BYTES = 64 * 1024
JSONL = b"application/jsonl"
_EXPIRES_AFTER = 24 * 3600


@dataclass
class FakeFile:
    id: str
    filename: str
    purpose: str
    created_at: int
    content: bytes | None = None  # an uploaded file
    lines: Callable[[], Iterator[bytes]] | None = None  # a generated one, line by line
    size: int = 0

    def chunks(self) -> Iterator[bytes]:
        if self.content is not None:
            yield self.content
            return
        buffer = bytearray()
        for line in self.lines():
            buffer += line + b"\n"
            if len(buffer) >= RESULTS_CHUNK_BYTES:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.size,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class FakeBatch:
    provider: str
    id: str
    created_at: int
    items: list[dict[str, Any]]  # {"custom_id", "model", "endpoint"}
    endpoint: str = ""  # openai: the items' endpoint
    input_file_id: str = ""
    ended: bool = False
    ended_at: int | None = None
    outcomes: dict[str, str] = field(default_factory=dict)  # custom_id -> succeeded/errored/...
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: FakeFile | None = None  # anthropic
    canceled: bool = False

    def counts(self) -> dict[str, int]:
        tally = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for item in self.items:
            tally[self.outcomes.get(item["custom_id"], "succeeded")] += 1
        return tally


class FakeBatches:
    """The batch and file state of one fake provider app; thread-safe (the server answers on
    its own thread while the test completes batches)."""

    def __init__(self, app: fake.FakeProviderApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self.files: dict[str, FakeFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.unavailable = 0
        self._numbers = itertools.count(1)

    # -----------------------------------------------------------------------------------------
    # Test control

    def complete(
        self,
        batch_id: str,
        *,
        errored: tuple[str, ...] | set[str] = (),
        expired: tuple[str, ...] | set[str] = (),
        canceled: tuple[str, ...] | set[str] = (),
        usage: dict[str, Any] | None = None,
        text_bytes: int = 0,
    ) -> None:
        """End a batch: every item succeeds unless named in ``errored``, ``expired`` or
        ``canceled``; ``usage`` is each succeeded item's usage object (the fake's default for
        the endpoint otherwise); ``text_bytes`` pads each answer's text to that many bytes."""
        with self._lock:
            batch = self.batches[batch_id]
            for name, custom_ids in (
                ("errored", errored),
                ("expired", expired),
                ("canceled", canceled),
            ):
                for custom_id in custom_ids:
                    batch.outcomes[custom_id] = name
            batch.ended = True
            batch.ended_at = int(time.time())
            usage_raw = json.dumps(usage).encode() if usage is not None else None
            if batch.provider == "openai":
                self._openai_files(batch, usage_raw, text_bytes)
            else:
                batch.results = FakeFile(
                    id=f"results_{batch.id}",
                    filename="results.jsonl",
                    purpose="batch_results",
                    created_at=batch.ended_at,
                    lines=lambda: _anthropic_lines(batch, usage_raw, text_bytes),
                )

    # -----------------------------------------------------------------------------------------
    # Serving

    @staticmethod
    def route(path: str) -> tuple[str, str] | None:
        if "/batches" not in path and "/files" not in path:
            return None
        for pattern, kind in _ROUTES:
            match = pattern.search(path)
            if match:
                return kind, (match.group(1) if match.groups() else "")
        return None

    async def serve(self, scope, headers: dict[bytes, bytes], body: bytes, send, recorded) -> None:
        kind, name = self.route(scope["path"])
        provider = "anthropic" if kind.startswith("anthropic") else "openai"
        denied = self.app._check_auth(provider, headers, scope["query_string"])
        if denied is not None:
            await fake._send(send, *denied, headers, recorded)
            return
        with self._lock:
            if self.unavailable > 0:
                self.unavailable -= 1
                await fake._send(send, *self.app._error(provider, 503), headers, recorded)
                return
        method = scope["method"]
        try:
            answer = getattr(self, f"_{kind}")(method, name, headers, body)
        except _NotFound:
            status, out_headers, content = self.app._error(provider, 404)
            await fake._send(send, status, out_headers, content, headers, recorded)
            return
        except fake._BadRequest as error:
            status, out_headers, content = self.app._error(provider, 400, str(error))
            await fake._send(send, status, out_headers, content, headers, recorded)
            return
        if isinstance(answer, FakeFile):
            await _send_file(send, answer, provider)
            return
        document = answer
        if isinstance(document, dict) and document.get("type") == "message_batch":
            document = _with_results_url(document, scope, headers)
        elif isinstance(document, dict) and isinstance(document.get("data"), list):
            document = {
                **document,
                "data": [
                    _with_results_url(item, scope, headers)
                    if item.get("type") == "message_batch"
                    else item
                    for item in document["data"]
                ],
            }
        content = fake._Body(fake.JSON, (fake._dumps(document),), False)
        out_headers = self.app._headers(provider, fake.JSON)
        await fake._send(send, 200, out_headers, content, headers, recorded)

    # OpenAI ----------------------------------------------------------------------------------

    def _files(self, method: str, name: str, headers, body: bytes):
        if method != "POST":
            with self._lock:
                data = [file.as_json() for file in self.files.values()]
            return {"object": "list", "data": data, "has_more": False}
        fields = _multipart(headers.get(b"content-type", b""), body)
        upload = fields.get("file")
        if upload is None:
            raise fake._BadRequest("'file' is a required property")
        filename, content = upload
        file = FakeFile(
            id=f"file-{uuid.uuid4().hex[:24]}",
            filename=filename or "upload.jsonl",
            purpose=fields.get("purpose", ("", b""))[1].decode() or "batch",
            created_at=int(time.time()),
            content=content,
            size=len(content),
        )
        with self._lock:
            self.files[file.id] = file
        return file.as_json()

    def _file(self, method: str, name: str, headers, body: bytes):
        return self._find_file(name).as_json()

    def _file_content(self, method: str, name: str, headers, body: bytes):
        return self._find_file(name)

    def _openai_batches(self, method: str, name: str, headers, body: bytes):
        if method != "POST":
            with self._lock:
                data = [
                    _openai_batch_json(batch)
                    for batch in self.batches.values()
                    if batch.provider == "openai"
                ]
            return {"object": "list", "data": data, "has_more": False}
        request = _json_object(body)
        input_file = self._find_file(str(request.get("input_file_id")))
        endpoint = request.get("endpoint")
        if endpoint not in ("/v1/chat/completions", "/v1/embeddings", "/v1/responses"):
            raise fake._BadRequest(f"Unsupported endpoint {endpoint!r}")
        items = []
        for line in input_file.content.splitlines():
            if line.strip():
                item = json.loads(line)
                items.append(
                    {"custom_id": item["custom_id"], "model": item["body"]["model"], **item}
                )
        batch = FakeBatch(
            provider="openai",
            id=f"batch_{uuid.uuid4().hex}",
            created_at=int(time.time()),
            items=items,
            endpoint=endpoint,
            input_file_id=input_file.id,
        )
        with self._lock:
            self.batches[batch.id] = batch
        return _openai_batch_json(batch)

    def _openai_batch(self, method: str, name: str, headers, body: bytes):
        return _openai_batch_json(self._find_batch(name, "openai"))

    def _openai_cancel(self, method: str, name: str, headers, body: bytes):
        batch = self._find_batch(name, "openai")
        batch.canceled = True
        return _openai_batch_json(batch)

    def _openai_files(self, batch: FakeBatch, usage_raw: bytes | None, text_bytes: int) -> None:
        number = next(self._numbers)
        ok = [i for i in batch.items if batch.outcomes.get(i["custom_id"]) is None]
        failed = [i for i in batch.items if batch.outcomes.get(i["custom_id"]) is not None]
        if ok:
            output = FakeFile(
                id=f"file-out{number:06d}{uuid.uuid4().hex[:12]}",
                filename=f"{batch.id}_output.jsonl",
                purpose="batch_output",
                created_at=batch.ended_at,
                lines=lambda: (_openai_line(batch, item, usage_raw, text_bytes) for item in ok),
            )
            self.files[output.id] = output
            batch.output_file_id = output.id
        if failed:
            errors = FakeFile(
                id=f"file-err{number:06d}{uuid.uuid4().hex[:12]}",
                filename=f"{batch.id}_error.jsonl",
                purpose="batch_output",
                created_at=batch.ended_at,
                lines=lambda: (_openai_line(batch, item, None, 0) for item in failed),
            )
            self.files[errors.id] = errors
            batch.error_file_id = errors.id

    # Anthropic -------------------------------------------------------------------------------

    def _anthropic_batches(self, method: str, name: str, headers, body: bytes):
        if method != "POST":
            with self._lock:
                data = [
                    _anthropic_batch_json(batch)
                    for batch in self.batches.values()
                    if batch.provider == "anthropic"
                ]
            return {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        request = _json_object(body)
        requests = request.get("requests")
        if not isinstance(requests, list) or not requests:
            raise fake._BadRequest("requests: Field required")
        items = [
            {"custom_id": item["custom_id"], "model": item["params"]["model"]} for item in requests
        ]
        batch = FakeBatch(
            provider="anthropic",
            id=f"msgbatch_{uuid.uuid4().hex}",
            created_at=int(time.time()),
            items=items,
        )
        with self._lock:
            self.batches[batch.id] = batch
        return _anthropic_batch_json(batch)

    def _anthropic_batch(self, method: str, name: str, headers, body: bytes):
        return _anthropic_batch_json(self._find_batch(name, "anthropic"))

    def _anthropic_cancel(self, method: str, name: str, headers, body: bytes):
        batch = self._find_batch(name, "anthropic")
        batch.canceled = True
        return _anthropic_batch_json(batch)

    def _anthropic_results(self, method: str, name: str, headers, body: bytes):
        batch = self._find_batch(name, "anthropic")
        if batch.results is None:
            raise _NotFound
        return batch.results

    # -----------------------------------------------------------------------------------------

    def _find_file(self, file_id: str) -> FakeFile:
        with self._lock:
            file = self.files.get(file_id)
        if file is None:
            raise _NotFound
        return file

    def _find_batch(self, batch_id: str, provider: str) -> FakeBatch:
        with self._lock:
            batch = self.batches.get(batch_id)
        if batch is None or batch.provider != provider:
            raise _NotFound
        return batch


class _NotFound(Exception):
    pass


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise fake._BadRequest("The request body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise fake._BadRequest("The request body must be a JSON object.")
    return document


def _multipart(content_type: bytes, body: bytes) -> dict[str, tuple[str, bytes]]:
    """The parts of a multipart/form-data body: name -> (filename, content)."""
    match = re.search(rb'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise fake._BadRequest("Expected a multipart/form-data body.")
    delimiter = b"--" + match.group(1)
    fields = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        filename = re.search(rb'filename="([^"]*)"', head)
        if name is None:
            continue
        fields[name.group(1).decode()] = (
            filename.group(1).decode() if filename else "",
            content[:-2] if content.endswith(b"\r\n") else content,
        )
    return fields


def _iso(moment: int | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def _openai_batch_json(batch: FakeBatch) -> dict[str, Any]:
    if batch.ended:
        status = "completed"
    elif batch.canceled:
        status = "cancelling"
    else:
        status = "in_progress"
    counts = batch.counts() if batch.ended else None
    failed = (counts["errored"] + counts["expired"] + counts["canceled"]) if counts else 0
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": None,
        "input_file_id": batch.input_file_id,
        "completion_window": "24h",
        "status": status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": batch.created_at,
        "in_progress_at": batch.created_at,
        "expires_at": batch.created_at + _EXPIRES_AFTER,
        "finalizing_at": batch.ended_at,
        "completed_at": batch.ended_at,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {
            "total": len(batch.items),
            "completed": len(batch.items) - failed if counts else 0,
            "failed": failed,
        },
        "metadata": {},
    }


def _anthropic_batch_json(batch: FakeBatch) -> dict[str, Any]:
    counts = batch.counts() if batch.ended else None
    if batch.ended:
        status = "ended"
    elif batch.canceled:
        status = "canceling"
    else:
        status = "in_progress"
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {
            "processing": 0 if counts else len(batch.items),
            "succeeded": counts["succeeded"] if counts else 0,
            "errored": counts["errored"] if counts else 0,
            "canceled": counts["canceled"] if counts else 0,
            "expired": counts["expired"] if counts else 0,
        },
        "ended_at": _iso(batch.ended_at),
        "created_at": _iso(batch.created_at),
        "expires_at": _iso(batch.created_at + _EXPIRES_AFTER),
        "archived_at": None,
        "cancel_initiated_at": None,
        "results_url": batch.id if batch.ended else None,  # made absolute when sent
    }


def _with_results_url(document: dict[str, Any], scope, headers: dict[bytes, bytes]) -> dict:
    if document.get("results_url") is None:
        return document
    host = headers.get(b"host", b"").decode("latin-1")
    url = f"{scope.get('scheme', 'http')}://{host}/v1/messages/batches/{document['id']}/results"
    return {**document, "results_url": url}


def _padded(body: dict[str, Any], text_bytes: int, path: tuple) -> dict[str, Any]:
    if not text_bytes:
        return body
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = ("x" * text_bytes)[:text_bytes]
    return body


def _openai_line(
    batch: FakeBatch, item: dict[str, Any], usage_raw: bytes | None, text_bytes: int
) -> bytes:
    custom_id = item["custom_id"]
    outcome = batch.outcomes.get(custom_id)
    line: dict[str, Any] = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id}
    if outcome == "errored":
        error = {"message": "Invalid 'messages'.", "type": "invalid_request_error"}
        line["response"] = {
            "status_code": 400,
            "request_id": f"req_{uuid.uuid4().hex}",
            "body": {"error": {**error, "param": "messages", "code": None}},
        }
        line["error"] = None
    elif outcome is not None:
        code = "batch_expired" if outcome == "expired" else "batch_cancelled"
        line["response"] = None
        line["error"] = {"code": code, "message": f"This request was not run ({outcome})."}
    else:
        if batch.endpoint == "/v1/embeddings":
            built = fake._build(
                "embeddings", item["model"], (1, fake.EMBEDDING_DIMS, "float"), usage_raw
            )
            body = json.loads(b"".join(built.frames))
        elif batch.endpoint == "/v1/responses":
            built = fake._build("responses", item["model"], (False, fake.DEFAULT_CHUNKS), usage_raw)
            body = _padded(
                json.loads(b"".join(built.frames)), text_bytes, ("output", 0, "content", 0, "text")
            )
        else:
            options = (False, False, fake.DEFAULT_CHUNKS)
            built = fake._build("chat", item["model"], options, usage_raw)
            body = _padded(
                json.loads(b"".join(built.frames)),
                text_bytes,
                ("choices", 0, "message", "content"),
            )
        line["response"] = {
            "status_code": 200,
            "request_id": f"req_{uuid.uuid4().hex}",
            "body": body,
        }
        line["error"] = None
    return fake._dumps(line)


def _anthropic_lines(batch: FakeBatch, usage_raw: bytes | None, text_bytes: int) -> Iterator[bytes]:
    for item in batch.items:
        custom_id = item["custom_id"]
        outcome = batch.outcomes.get(custom_id, "succeeded")
        if outcome == "succeeded":
            built = fake._build("messages", item["model"], (False, fake.DEFAULT_CHUNKS), usage_raw)
            message = _padded(
                json.loads(b"".join(built.frames)), text_bytes, ("content", 0, "text")
            )
            result: dict[str, Any] = {"type": "succeeded", "message": message}
        elif outcome == "errored":
            error = {"type": "invalid_request_error", "message": "max_tokens: Field required"}
            result = {"type": "errored", "error": {"type": "error", "error": error}}
        else:
            result = {"type": outcome}
        yield fake._dumps({"custom_id": custom_id, "result": result})


async def _send_file(send, file: FakeFile, provider: str) -> None:
    """A file's content, streamed in chunks as it is generated (chunked, no content-length for
    a generated one)."""
    headers = [(b"content-type", JSONL if provider == "anthropic" else b"application/octet-stream")]
    if file.content is not None:
        headers.append((b"content-length", str(len(file.content)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in file.chunks():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
