"""OpenAI audio: transcriptions, translations and speech (DESIGN.md, "Audio").

Where usage comes from (checked against the openai SDK's ``types/audio`` and the API reference):

- ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` are ``multipart/form-data``
  uploads; the model is a form field. A JSON answer (``response_format`` ``json``,
  ``verbose_json``, ``diarized_json``) carries ``usage``: ``{"type": "tokens", "input_tokens",
  "input_token_details": {"text_tokens", "audio_tokens"}, "output_tokens", "total_tokens"}``
  for the token-priced models (gpt-4o-transcribe, gpt-4o-mini-transcribe), ``{"type":
  "duration", "seconds"}`` for whisper-1. A translation's ``verbose_json`` answer has no usage
  object, only the input's ``duration`` (seconds), which is what whisper-1 bills. ``text``,
  ``srt`` and ``vtt`` answers are plain text without usage: ``usage_unknown``. A streamed
  transcription (form field ``stream=true``) is an event stream of ``transcript.text.delta``
  events ending in ``transcript.text.done``, which carries the token usage. No answer names its
  model: the event keeps the requested one.
- ``/v1/audio/speech`` is JSON (``model``, ``input``, ``voice``, ...). The answer is the audio
  itself, without usage. tts-1 and tts-1-hd are priced per input character, so the request's
  ``input`` length in characters is their usage. gpt-4o-mini-tts is priced per token, reported
  only when the request asked for ``stream_format: "sse"``: the last event,
  ``speech.audio.done``, carries ``usage`` ``{input_tokens, output_tokens, total_tokens}``, and
  its output is audio; a plain audio answer of a token-priced model is ``usage_unknown``.

Usage beyond the six token counts goes in the record's ``usage_details`` under genai-prices'
names (``contract.USAGE_DETAIL_KEYS``): ``input_audio_tokens`` (the audio share of the input,
text is the rest), ``output_audio_tokens``, ``audio_seconds`` and ``input_characters``.

A multipart body is read only within what the proxy already inspects (a body up to
``COSTR_PROXY_INSPECT_BYTES``), and only up to the model field: the audio's bytes are skipped by
searching for the next boundary, never copied. A larger upload streams through uninspected,
its model unknown (no answer names it): its event keeps the usage the answer reports, priced
``unpriced`` without a model.
"""

import contextlib
import re
from dataclasses import dataclass
from typing import Any

from apps.proxy.providers.base import (
    JsonBodyUsageReader,
    NoUsageReader,
    RequestInfo,
    SSEUsageReader,
    UsageReader,
    loads_or_none,
)
from apps.proxy.sse import Event
from apps.usage.metering.provider_usage import Usage, count, text_or_none
from costr.net.decoding import ContentDecoder

AUDIO_ENDPOINTS = {
    "v1/audio/transcriptions": "transcriptions",
    "v1/audio/translations": "translations",
    "v1/audio/speech": "speech",
}
# Speech models priced per input character (the dated snapshots start alike: tts-1-1106,
# tts-1-hd-1106). Every other speech model is priced per token.
CHARACTER_PRICED_SPEECH_PREFIX = "tts-1"

# The form fields read from a multipart upload, and the bound on one field's value.
_FORM_FIELD_BYTES = 1024
_DISPOSITION = re.compile(rb'(?im)^content-disposition:[^\r\n]*?\bname="([^"]*)"([^\r\n]*)')


@dataclass(slots=True, frozen=True)
class SpeechRequestInfo(RequestInfo):
    """A speech request: ``input_characters`` is its ``input``'s length when the model is
    priced per character, else None."""

    input_characters: int | None = None


@dataclass(slots=True)
class AudioUsage(Usage):
    """Usage with its ``usage_details`` (``contract.USAGE_DETAIL_KEYS``)."""

    details: dict[str, int | float] | None = None

    def record_fields(self, organization_id: int) -> dict[str, Any]:
        """What the usage record takes from this beyond the token counts (``app.record``)."""
        return {"usage_details": self.details} if self.details else {}


def inspect_audio_request(endpoint: str, body_head: bytes | None) -> RequestInfo:
    """Model and stream flag of an audio request whose body could be read (else unknown)."""
    if body_head is None:
        return RequestInfo(endpoint)
    if endpoint == "speech":
        return _inspect_speech(body_head)
    fields = multipart_fields(body_head, ("model", "stream"))
    return RequestInfo(endpoint, fields.get("model"), fields.get("stream") == "true")


def _inspect_speech(body: bytes) -> RequestInfo:
    document = loads_or_none(body) if body else None
    if not isinstance(document, dict):
        return RequestInfo("speech")
    model = text_or_none(document.get("model"))
    text = document.get("input")
    characters = None
    if isinstance(text, str) and model and model.startswith(CHARACTER_PRICED_SPEECH_PREFIX):
        characters = len(text)
    stream = document.get("stream_format") == "sse"
    return SpeechRequestInfo("speech", model, stream, document, input_characters=characters)


def multipart_fields(body: bytes, wanted: tuple[str, ...]) -> dict[str, str]:
    """The values of the ``wanted`` plain fields of a ``multipart/form-data`` body.

    The boundary is the body's first line (a body with a preamble, which no SDK sends, yields
    nothing). Parts are visited in order; the walk stops once every wanted field is found, or
    at a file part (one with a ``filename``) once the first wanted field is: the SDKs send
    their fields before the file, and a file part is otherwise stepped over by searching for
    the next delimiter, its content never copied. A value longer than ``_FORM_FIELD_BYTES`` or
    not UTF-8 is left out. Never raises.
    """
    if not body.startswith(b"--"):
        return {}
    line_end = body.find(b"\r\n", 0, 200)
    if line_end < 3:
        return {}
    delimiter = b"\r\n" + body[:line_end]
    found: dict[str, str] = {}
    position = line_end + 2
    while len(found) < len(wanted):
        head_end = body.find(b"\r\n\r\n", position, position + 4096)
        if head_end < 0:
            break
        disposition = _DISPOSITION.search(body, position, head_end + 2)
        is_file = disposition is not None and b"filename=" in disposition.group(2)
        if is_file and wanted[0] in found:
            break
        next_part = body.find(delimiter, head_end + 4)
        if next_part < 0:
            break
        if disposition is not None and not is_file:
            name = disposition.group(1).decode("latin-1")
            start = head_end + 4
            if name in wanted and name not in found and next_part - start <= _FORM_FIELD_BYTES:
                with contextlib.suppress(UnicodeDecodeError):
                    found[name] = body[start:next_part].decode("utf-8")
        position = next_part + len(delimiter)
        if body[position : position + 2] != b"\r\n":  # "--" closes the body
            break
        position += 2
    return found


def usage_from_audio_usage(raw: Any, *, duration: Any = None) -> AudioUsage | None:
    """An audio answer's ``usage`` (tokens or duration), or a verbose translation's
    ``duration``, normalised; None when there is neither."""
    if isinstance(raw, dict) and raw.get("type") == "duration":
        seconds = _seconds(raw.get("seconds"))
        if seconds is None:
            return None
        return AudioUsage(details={"audio_seconds": seconds}, raw=raw)
    if isinstance(raw, dict) and ("input_tokens" in raw or "output_tokens" in raw):
        input_tokens, output_tokens = count(raw, "input_tokens"), count(raw, "output_tokens")
        details: dict[str, int | float] = {}
        audio = _input_audio_tokens(input_tokens, raw.get("input_token_details"))
        if audio is not None:
            details["input_audio_tokens"] = audio
        return AudioUsage(
            input_tokens=input_tokens,
            cached_input_tokens=0 if input_tokens is not None else None,
            cache_write_tokens=0 if input_tokens is not None else None,
            output_tokens=output_tokens,
            reasoning_tokens=0 if output_tokens is not None else None,
            details=details or None,
            raw=raw,
        )
    seconds = _seconds(duration)
    if seconds is not None:
        return AudioUsage(details={"audio_seconds": seconds}, raw={"duration": duration})
    return None


def _seconds(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return value


def _input_audio_tokens(input_tokens: int | None, details: Any) -> int | None:
    """The audio share of the input: ``audio_tokens``, else the input less ``text_tokens``."""
    audio = count(details, "audio_tokens")
    if audio is not None:
        return audio
    text = count(details, "text_tokens")
    if text is not None and input_tokens is not None and text <= input_tokens:
        return input_tokens - text
    return None


def usage_from_audio_body(document: Any) -> AudioUsage | None:
    """Usage of a transcription or translation JSON answer."""
    if not isinstance(document, dict):
        return None
    return usage_from_audio_usage(document.get("usage"), duration=document.get("duration"))


class TranscriptionStreamUsageReader(SSEUsageReader):
    """A streamed transcription: usage in ``transcript.text.done``. The delta events before it
    are told apart by a byte search and never parsed."""

    def __init__(self, decoder: ContentDecoder):
        super().__init__(decoder)
        self._usage: AudioUsage | None = None

    def _on_event(self, event: Event) -> None:
        if event.truncated or b'"transcript.text.done"' not in event.data:
            return
        document = loads_or_none(event.data)
        if isinstance(document, dict) and document.get("type") == "transcript.text.done":
            self._usage = usage_from_audio_usage(document.get("usage"))
            self._complete = True

    def _result(self) -> Usage | None:
        return self._usage


class SpeechStreamUsageReader(SSEUsageReader):
    """Speech as events (``stream_format: "sse"``): usage in ``speech.audio.done``; the audio
    deltas before it are never parsed. All of a speech answer's output is audio."""

    def __init__(self, decoder: ContentDecoder):
        super().__init__(decoder)
        self._usage: AudioUsage | None = None

    def _on_event(self, event: Event) -> None:
        if event.truncated or b'"speech.audio.done"' not in event.data:
            return
        document = loads_or_none(event.data)
        if not isinstance(document, dict) or document.get("type") != "speech.audio.done":
            return
        raw = document.get("usage")
        self._complete = True
        if not isinstance(raw, dict):
            return
        input_tokens, output_tokens = count(raw, "input_tokens"), count(raw, "output_tokens")
        self._usage = AudioUsage(
            input_tokens=input_tokens,
            cached_input_tokens=0 if input_tokens is not None else None,
            cache_write_tokens=0 if input_tokens is not None else None,
            output_tokens=output_tokens,
            reasoning_tokens=0 if output_tokens is not None else None,
            details={"output_audio_tokens": output_tokens} if output_tokens is not None else None,
            raw=raw,
        )

    def _result(self) -> Usage | None:
        return self._usage


class SpeechCharactersReader(NoUsageReader):
    """Speech answered as audio: the usage is the request's, known before any byte (the
    characters of a character-priced model's input; nothing for the others)."""

    def __init__(self, input_characters: int | None):
        super().__init__()
        self._characters = input_characters

    def _result(self) -> Usage | None:
        if self._characters is None:
            return None
        return AudioUsage(details={"input_characters": self._characters})


def audio_body_reader(info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
    """The usage reader for a successful audio answer that is not an event stream. A text,
    srt or vtt transcription is no JSON object, so it reads as no usage."""
    if info.endpoint == "speech":
        characters = info.input_characters if isinstance(info, SpeechRequestInfo) else None
        return SpeechCharactersReader(characters)
    return JsonBodyUsageReader(decoder, usage_from_audio_body, "usage", ())


def audio_stream_reader(info: RequestInfo, decoder: ContentDecoder) -> UsageReader:
    """The usage reader for a successful audio event stream."""
    if info.endpoint == "speech":
        return SpeechStreamUsageReader(decoder)
    return TranscriptionStreamUsageReader(decoder)
