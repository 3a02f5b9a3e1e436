"""Expected tokens and cost of calls to the fake provider, from genai-prices' own reading of the
usage the fake publishes (as tests/test_real_clients.py computes them), priced at each call's
timestamp. stdin: [{"provider", "endpoint", "model", "timestamp"}]; stdout: the same list with
"input_tokens" … "reasoning_tokens" and "cost_usd" (a decimal string)."""

import json
import sys
from datetime import datetime

import genai_prices

from tests.fakes import provider as fake

PUBLISHED = {
    ("openai", "chat"): ({"usage": fake.OPENAI_CHAT_USAGE}, "chat"),
    ("openai", "responses"): ({"usage": fake.OPENAI_RESPONSES_USAGE}, "responses"),
    ("openai", "embeddings"): ({"usage": fake.OPENAI_EMBEDDINGS_USAGE}, "embeddings"),
    ("anthropic", "messages"): ({"usage": fake.ANTHROPIC_USAGE}, "default"),
    ("google", "generate"): ({"usageMetadata": fake.GEMINI_USAGE}, "default"),
}

out = []
for call in json.load(sys.stdin):
    body, flavor = PUBLISHED[(call["provider"], call["endpoint"])]
    usage = genai_prices.extract_usage(body, provider_id=call["provider"], api_flavor=flavor).usage
    when = datetime.fromisoformat(call["timestamp"].replace("Z", "+00:00"))
    price = genai_prices.calc_price(
        usage, call["model"], provider_id=call["provider"], genai_request_timestamp=when
    )
    out.append(
        {
            **call,
            "input_tokens": usage.input_tokens,
            "cached_input_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cache_write_1h_tokens": usage.cache_write_1h_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.output_reasoning_tokens,
            "cost_usd": str(price.total_price),
        }
    )
json.dump(out, sys.stdout)
