"""OpenAI audio through Costr (DESIGN.md, "Every endpoint and transport the SDKs use": Audio):
the official openai SDK uploads transcriptions and translations as multipart/form-data and asks
for speech, against the fake provider that answers in OpenAI's wire format. Each call must
reach the client as it would directly, and make one event, metered from the answer's usage
(tokens or seconds) or, for character-priced speech, from the request's input.

Expected costs are worked out here from genai-prices' published rates (checked in
``test_the_rates_used_here_are_the_catalogues``), never taken from the code under test:
- gpt-4o-transcribe: $2.50 per million text input tokens, $6 audio input, $10 output;
- gpt-4o-mini-transcribe: $1.25 text input, $3 audio input, $5 output;
- whisper-1: $0.36 per audio hour ($0.006 a minute);
- tts-1: $15 per million input characters; tts-1-hd: $30;
- gpt-4o-mini-tts: $0.60 per million input tokens, $12 output (audio).
"""

import base64
import io
import json
import struct
from decimal import Decimal

import genai_prices
import pytest

from apps.proxy.providers.openai_audio import multipart_fields
from tests.fakes.provider import form_fields, speech_audio, text_pieces

pytestmark = pytest.mark.django_db(transaction=True)

MILLION = Decimal(10**6)
TOKEN_USAGE = {  # the fake's default for token-priced transcription models
    "type": "tokens",
    "input_tokens": 250,
    "input_token_details": {"text_tokens": 10, "audio_tokens": 240},
    "output_tokens": 60,
    "total_tokens": 310,
}


def wav(seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A real, tiny PCM WAV file (silence): the fake need not decode it, the proxy must carry
    it byte for byte."""
    frames = b"\x00\x00" * int(seconds * rate)
    header = b"RIFF" + struct.pack("<I", 36 + len(frames)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + fmt + b"data" + struct.pack("<I", len(frames)) + frames


def _attribution(customer: str = "acme") -> dict[str, str]:
    return {"X-Costr-Customer": customer, "X-Costr-Property-Feature": "voice"}


def _upload_fields(request) -> dict:
    return form_fields(request.header("content-type").encode(), request.body)


def test_the_rates_used_here_are_the_catalogues():
    def price(model, **usage):
        return genai_prices.calc_price(
            genai_prices.Usage(**usage), model, provider_id="openai"
        ).total_price

    assert price("gpt-4o-transcribe", input_tokens=10**6) == Decimal("2.5")
    assert price("gpt-4o-transcribe", input_tokens=10**6, input_audio_tokens=10**6) == 6
    assert price("gpt-4o-transcribe", output_tokens=10**6) == 10
    assert price("gpt-4o-mini-transcribe", input_tokens=10**6, input_audio_tokens=10**6) == 3
    assert price("whisper-1", audio_seconds=3600) == Decimal("0.36")
    assert price("tts-1", input_characters=10**6) == 15
    assert price("tts-1-hd", input_characters=10**6) == 30
    assert price("gpt-4o-mini-tts", output_tokens=10**6) == 12


def test_transcription_upload_is_forwarded_whole_and_metered_by_its_token_usage(sdk, proxy):
    audio = wav()
    direct = sdk.openai(f"{proxy.fake.url}/v1", proxy.fake.keys["openai"])
    expected = direct.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("hello.wav", audio, "audio/wav")
    )
    proxy.fake.clear()

    client = sdk.openai(proxy.url("openai"), proxy.token)
    result = client.audio.transcriptions.create(
        model="gpt-4o-transcribe",
        file=("hello.wav", audio, "audio/wav"),
        extra_headers=_attribution(),
    )

    assert result.model_dump() == expected.model_dump()
    assert result.text == "".join(text_pieces())
    # The upload reached the provider whole, parsed by a parser that is not Costr's.
    fields = _upload_fields(proxy.fake.last_request)
    assert fields["model"] == "gpt-4o-transcribe"
    assert fields["file"] == ("hello.wav", audio)
    [event] = proxy.events()
    assert (event.endpoint, event.model, event.requested_model) == (
        "transcriptions",
        "gpt-4o-transcribe",
        "gpt-4o-transcribe",
    )
    assert (event.status, event.outcome, event.stream) == (200, "ok", False)
    assert (event.input_tokens, event.output_tokens) == (250, 60)
    assert event.usage_details == {"input_audio_tokens": 240}
    assert event.raw_usage == TOKEN_USAGE
    # 10 text tokens at $2.50, 240 audio tokens at $6, 60 output tokens at $10 per million.
    assert event.cost_usd == (10 * Decimal("2.5") + 240 * 6 + 60 * 10) / MILLION
    assert event.price_source == "catalog"
    assert event.customer.external_id == "acme"
    assert event.properties == {"feature": "voice"}


def test_whisper_transcription_is_priced_by_the_seconds_it_reports(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    client.audio.transcriptions.create(
        model="whisper-1", file=("one-minute.wav", wav(), "audio/wav")
    )
    verbose = client.audio.transcriptions.create(
        model="whisper-1",
        file=("short.mp3", b"ID3\x04" + bytes(2000), "audio/mpeg"),
        response_format="verbose_json",
        extra_headers={"x-fake-usage": '{"type": "duration", "seconds": 12.5}'},
    )
    assert verbose.duration == 12.5

    minute, short = proxy.events(2)
    assert (minute.model, minute.input_tokens, minute.output_tokens) == ("whisper-1", None, None)
    assert minute.usage_details == {"audio_seconds": 60}
    assert minute.cost_usd == Decimal("0.006")  # $0.36 an hour
    assert short.usage_details == {"audio_seconds": 12.5}
    assert short.cost_usd == Decimal("0.36") * Decimal("12.5") / 3600
    assert {minute.price_source, short.price_source} == {"catalog"}


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
def test_a_transcription_answered_as_plain_text_is_usage_unknown(sdk, proxy, response_format):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    text = client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe",
        file=("a.wav", wav(), "audio/wav"),
        response_format=response_format,
    )
    assert "".join(text_pieces()) in text

    [event] = proxy.events()
    assert (event.endpoint, event.model, event.status) == (
        "transcriptions",
        "gpt-4o-mini-transcribe",
        200,
    )
    assert event.input_tokens is None and event.usage_details is None
    assert (event.cost_usd, event.price_source) == (None, "usage_unknown")


def test_translation_is_priced_by_the_duration_of_its_verbose_answer(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    plain = client.audio.translations.create(model="whisper-1", file=("fr.wav", wav(), "audio/wav"))
    verbose = client.audio.translations.create(
        model="whisper-1", file=("fr.wav", wav(), "audio/wav"), response_format="verbose_json"
    )
    assert plain.text == verbose.text == "".join(text_pieces())

    first, second = proxy.events(2)
    assert {first.endpoint, second.endpoint} == {"translations"}
    # A json translation carries no usage at all (the SDK's Translation has only its text).
    assert (first.usage_details, first.cost_usd, first.price_source) == (
        None,
        None,
        "usage_unknown",
    )
    assert second.usage_details == {"audio_seconds": 60.0}
    assert (second.cost_usd, second.price_source) == (Decimal("0.006"), "catalog")


def test_streamed_transcription_is_relayed_event_by_event_and_metered_from_its_done_event(
    sdk, proxy
):
    usage = {
        "type": "tokens",
        "input_tokens": 1000,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 1000},
        "output_tokens": 200,
        "total_tokens": 1200,
    }
    client = sdk.openai(proxy.url("openai"), proxy.token)
    stream = client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe",
        file=("a.wav", wav(), "audio/wav"),
        stream=True,
        extra_headers={"x-fake-usage": json.dumps(usage), **_attribution()},
    )
    events = list(stream)
    assert [e.type for e in events] == ["transcript.text.delta"] * 5 + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text

    [event] = proxy.events()
    assert (event.endpoint, event.model, event.stream) == (
        "transcriptions",
        "gpt-4o-mini-transcribe",
        True,
    )
    assert (event.input_tokens, event.output_tokens) == (1000, 200)
    assert event.usage_details == {"input_audio_tokens": 1000}
    # 1000 audio input tokens at $3, 200 output at $5 per million.
    assert event.cost_usd == (1000 * Decimal(3) + 200 * Decimal(5)) / MILLION
    assert event.customer.external_id == "acme"


@pytest.mark.parametrize(("model", "per_million"), [("tts-1", 15), ("tts-1-hd", 30)])
def test_character_priced_speech_is_metered_by_its_inputs_characters(
    sdk, proxy, model, per_million
):
    text = "Bonjour à tous, ça va? " * 40 + "🎧"  # 921 characters, more bytes than that
    assert len(text) == 921 and len(text.encode()) > 921
    direct = sdk.openai(f"{proxy.fake.url}/v1", proxy.fake.keys["openai"])
    expected = direct.audio.speech.create(model=model, voice="alloy", input=text).content
    proxy.fake.clear()

    client = sdk.openai(proxy.url("openai"), proxy.token)
    audio = client.audio.speech.create(
        model=model, voice="alloy", input=text, extra_headers=_attribution()
    ).content

    assert audio == expected == b"".join(speech_audio(1024 + i) for i in range(5))
    [event] = proxy.events()
    assert (event.endpoint, event.model, event.stream, event.status) == (
        "speech",
        model,
        False,
        200,
    )
    assert event.input_tokens is None
    assert event.usage_details == {"input_characters": 921}
    assert event.cost_usd == 921 * Decimal(per_million) / MILLION
    assert (event.price_source, event.customer.external_id) == ("catalog", "acme")


def test_token_priced_speech_as_events_is_metered_from_speech_audio_done(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    body = client.audio.speech.create(
        model="gpt-4o-mini-tts", voice="coral", input="Hello there!", stream_format="sse"
    ).content
    direct = sdk.openai(f"{proxy.fake.url}/v1", proxy.fake.keys["openai"])
    assert (
        body
        == direct.audio.speech.create(
            model="gpt-4o-mini-tts", voice="coral", input="Hello there!", stream_format="sse"
        ).content
    )
    assert b'"type":"speech.audio.done"' in body

    [event] = proxy.events()
    assert (event.endpoint, event.model, event.stream) == ("speech", "gpt-4o-mini-tts", True)
    assert (event.input_tokens, event.output_tokens) == (14, 101)
    assert event.usage_details == {"output_audio_tokens": 101}
    # 14 input tokens at $0.60, 101 output (audio) tokens at $12 per million.
    assert event.cost_usd == (14 * Decimal("0.6") + 101 * 12) / MILLION


def test_token_priced_speech_answered_as_audio_is_usage_unknown(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    audio = client.audio.speech.create(model="gpt-4o-mini-tts", voice="coral", input="Hi").content
    assert audio.startswith(b"\xff\xfb")

    [event] = proxy.events()
    assert (event.endpoint, event.model, event.usage_details) == ("speech", "gpt-4o-mini-tts", None)
    assert (event.cost_usd, event.price_source) == (None, "usage_unknown")


def test_a_refused_speech_request_costs_nothing(sdk, proxy):
    client = sdk.openai(proxy.url("openai"), proxy.token)
    with pytest.raises(Exception) as refused:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi", stream_format="sse")
    assert getattr(refused.value, "status_code", None) == 400

    [event] = proxy.events()
    assert (event.endpoint, event.status, event.outcome) == ("speech", 400, "upstream_error")
    # No characters are billed for a request the provider refused.
    assert (event.usage_details, event.cost_usd, event.price_source) == (None, 0, "no_usage")


def test_an_upload_too_large_to_read_whole_streams_through_priced_by_the_model_its_form_names(
    sdk, proxy
):
    audio = wav(seconds=330, rate=8000)  # 5.3 MB of samples: past the 4 MiB Costr reads whole
    client = sdk.openai(proxy.url("openai"), proxy.token)
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("long.wav", audio, "audio/wav"), extra_headers=_attribution()
    )
    assert result.text == "".join(text_pieces())
    assert _upload_fields(proxy.fake.last_request)["file"] == ("long.wav", audio)

    [event] = proxy.events()
    # The model comes from the form's fields, which precede the file in the body's first bytes.
    assert (event.endpoint, event.model, event.status) == ("transcriptions", "whisper-1", 200)
    assert event.usage_details == {"audio_seconds": 60}
    # whisper-1: $0.006 a minute.
    assert (event.cost_usd, event.price_source) == (Decimal("0.006"), "catalog")
    assert event.customer.external_id == "acme"


# ---------------------------------------------------------------------------------------------
# The multipart head, read by Costr without the provider


def _form(*parts: tuple[str, bytes, str | None], boundary: str = "b0undary") -> bytes:
    out = io.BytesIO()
    for name, value, filename in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        if filename is not None:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n" + value + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def test_multipart_fields_are_read_in_any_order_and_the_file_is_stepped_over():
    audio = b"--b0und" + bytes(range(256)) * 50  # looks like the boundary's start, is not
    sdk_order = _form(
        ("model", b"whisper-1", None), ("stream", b"true", None), ("file", audio, "a")
    )
    curl_order = _form(("file", audio, "a.wav"), ("stream", b"true", None), ("model", b"gpt", None))
    assert multipart_fields(sdk_order, ("model", "stream")) == {
        "model": "whisper-1",
        "stream": "true",
    }
    assert multipart_fields(curl_order, ("model", "stream")) == {"model": "gpt", "stream": "true"}
    # Once the model is known, the walk ends at the file: fields after it are not read.
    model_first = _form(("model", b"m", None), ("file", audio, "a"), ("stream", b"true", None))
    assert multipart_fields(model_first, ("model", "stream")) == {"model": "m"}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not multipart at all",
        b"preamble\r\n" + _form(("model", b"whisper-1", None)),
        _form(("model", b"x" * 2000, None)),  # too long to be a model name
        _form(("model", b"\xff\xfe", None)),  # not UTF-8
        _form(("model", b"whisper-1", None))[:30],  # cut before the value ends
        b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1',  # no end
    ],
)
def test_a_multipart_body_that_cannot_be_read_names_no_model(body):
    assert multipart_fields(body, ("model", "stream")) == {}


def test_speech_sse_audio_is_base64_of_the_fakes_audio():
    """The fake's speech events carry audio the client can decode (a check of the fake)."""
    assert base64.b64decode(base64.b64encode(speech_audio(1024))) == speech_audio(1024)
