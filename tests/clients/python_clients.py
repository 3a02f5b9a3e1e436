"""Runs scenarios with Python clients nobody at Costr wrote (LangChain's ``ChatOpenAI`` and
LiteLLM's SDK), one after another, as their users would call them, and prints what each call got
as JSON on stdout. The twin of ``tests/clients/node/run.mjs``, run the same way by
``tests/test_real_clients.py``: in a process of its own, because LiteLLM reads its environment
and registers its globals at import.

Input (JSON on stdin), as for the Node runner: runs, each a set of targets and the scenarios to
run against them, one after another (LiteLLM takes seconds to import: one process serves both
the direct and the proxied run):
    {"runs": [{"label": "direct",
               "targets": {"openai": {"baseURL": ..., "apiKey": ...}, "anthropic": {...},
                           "google": {...}},
               "scenarios": [{"name": "langchain.invoke", "customer": "..."}, ...]}, ...]}
Output: {"<label>": {"<name>": {"result": ..., "usage": ...} or {"error": "..."}},
         "_outside": [...]}.
Neither client exposes the response bytes, so ``result`` is the client's parsed output and
``usage`` the usage it reports. ``_outside`` lists every address the process tried to reach
other than 127.0.0.1 (an audit hook sees each DNS look-up and connect): LiteLLM fetches a price
map at import unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is set, and nothing may reach out here.
"""

import json
import sys
import traceback

LOOPBACK = ("127.0.0.1", "localhost", "::1")
outside: list[str] = []


def _watch_network(event: str, args: tuple) -> None:
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode("latin-1")
    if host not in LOOPBACK:
        outside.append(f"{event} {host}")


sys.addaudithook(_watch_network)

MESSAGES = [{"role": "user", "content": "Hi"}]
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5-20251001"
GEMINI_MODEL = "gemini-2.5-flash"


def _plain(value):
    """A client's object as JSON data (pydantic models and LiteLLM's own types included)."""
    return json.loads(json.dumps(value, default=_dump))


def _dump(value):
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if hasattr(value, "dict"):
        return value.dict()
    return repr(value)


def _langchain(target, customer, **kwargs):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=OPENAI_MODEL,
        base_url=target["baseURL"],
        api_key=target["apiKey"],
        max_retries=0,
        default_headers={"X-Costr-Customer": customer},
        **kwargs,
    )


def langchain_invoke(targets, customer):
    message = _langchain(targets["openai"], customer).invoke("Hi")
    # (The message's own id is LangChain's, new each run.)
    result = {"content": message.content, "response_metadata": message.response_metadata}
    return result, message.usage_metadata


def _langchain_stream(model):
    chunks = list(model.stream("Hi"))
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    result = {
        "contents": [chunk.content for chunk in chunks],
        "response_metadata": [chunk.response_metadata for chunk in chunks],
    }
    return result, usage


def langchain_stream(targets, customer):
    """As ``ChatOpenAI`` streams by default for a base URL of one's own."""
    return _langchain_stream(_langchain(targets["openai"], customer))


def langchain_stream_usage(targets, customer):
    """With ``stream_usage=True``, the client's own request for usage."""
    return _langchain_stream(_langchain(targets["openai"], customer, stream_usage=True))


def _litellm(model, target, customer, **kwargs):
    import litellm

    return litellm.completion(
        model=model,
        messages=MESSAGES,
        api_base=target["baseURL"],
        api_key=target["apiKey"],
        extra_headers={"X-Costr-Customer": customer},
        num_retries=0,
        **kwargs,
    )


def _litellm_whole(model, target, customer):
    response = _litellm(model, target, customer)
    result = {
        "model": response.model,
        "choices": _plain(response.choices),
    }
    return result, _plain(response.usage)


def _litellm_stream(model, target, customer):
    chunks = list(
        _litellm(model, target, customer, stream=True, stream_options={"include_usage": True})
    )
    result = {
        "model": [chunk.model for chunk in chunks],
        "deltas": [[choice.delta.content for choice in chunk.choices] for chunk in chunks],
        "finish_reasons": [[choice.finish_reason for choice in chunk.choices] for chunk in chunks],
    }
    usage = [_plain(chunk.usage) for chunk in chunks if getattr(chunk, "usage", None)]
    return result, usage


def litellm_openai(targets, customer):
    return _litellm_whole(f"openai/{OPENAI_MODEL}", targets["openai"], customer)


def litellm_openai_stream(targets, customer):
    return _litellm_stream(f"openai/{OPENAI_MODEL}", targets["openai"], customer)


def litellm_anthropic(targets, customer):
    return _litellm_whole(f"anthropic/{ANTHROPIC_MODEL}", targets["anthropic"], customer)


def litellm_anthropic_stream(targets, customer):
    return _litellm_stream(f"anthropic/{ANTHROPIC_MODEL}", targets["anthropic"], customer)


def _gemini_root(target):
    """LiteLLM's ``api_base`` for Gemini is the API version's root."""
    return {**target, "baseURL": f"{target['baseURL']}/v1beta"}


def litellm_gemini(targets, customer):
    return _litellm_whole(f"gemini/{GEMINI_MODEL}", _gemini_root(targets["google"]), customer)


def litellm_gemini_stream(targets, customer):
    return _litellm_stream(f"gemini/{GEMINI_MODEL}", _gemini_root(targets["google"]), customer)


SCENARIOS = {
    "langchain.invoke": langchain_invoke,
    "langchain.stream": langchain_stream,
    "langchain.stream_usage": langchain_stream_usage,
    "litellm.openai": litellm_openai,
    "litellm.openai_stream": litellm_openai_stream,
    "litellm.anthropic": litellm_anthropic,
    "litellm.anthropic_stream": litellm_anthropic_stream,
    "litellm.gemini": litellm_gemini,
    "litellm.gemini_stream": litellm_gemini_stream,
}


def run_scenarios(targets: dict, scenarios: list[dict]) -> dict:
    report: dict = {}
    for scenario in scenarios:
        name = scenario["name"]
        run = SCENARIOS.get(name)
        if run is None:
            report[name] = {"error": f"no scenario named {name}"}
            continue
        try:
            result, usage = run(targets, scenario["customer"])
            report[name] = {"result": _plain(result), "usage": _plain(usage)}
        except Exception:
            report[name] = {"error": traceback.format_exc()}
    return report


def main() -> None:
    config = json.load(sys.stdin)
    # LiteLLM prints its hints on stdout: everything but the report goes to stderr.
    report_to = sys.stdout
    sys.stdout = sys.stderr
    report = {
        run["label"]: run_scenarios(run["targets"], run["scenarios"]) for run in config["runs"]
    }
    report["_outside"] = outside
    report_to.write(json.dumps(report))


if __name__ == "__main__":
    main()
