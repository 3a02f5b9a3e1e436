// Runs scenarios with the official Node SDKs (openai, @anthropic-ai/sdk, @google/genai) and the
// Vercel AI SDK (ai with @ai-sdk/openai, @ai-sdk/anthropic, @ai-sdk/google), one after another,
// as their users would call them, and prints what each call sent and got as JSON on stdout.
//
// Input (JSON on stdin): runs, each a set of targets and the scenarios to run against them:
//   {"runs": [{"label": "direct",
//              "targets": {"openai": {"baseURL": ..., "apiKey": ...}, "anthropic": {...},
//                          "google": {...}},
//              "scenarios": [{"name": "openai.chat", "customer": "..."}, ...]}, ...]}
// The base URLs are what a user would configure: the provider's origin (the fake's), or Costr's
// `{BASE}/p/{org}/{provider}` (plus `/v1` for openai). Each scenario sends its `customer` in
// `X-Costr-Customer` the way its SDK lets a user add a header to a request.
//
// Output: {"<label>": {"<name>": {"exchanges": [...], "result": ..., "usage": ...}
//                      or {"exchanges": [...], "error": "..."}}}.
// `exchanges` lists every HTTP request the call made: method, URL, status, content type and the
// response body as the SDK's fetch received it (base64), read from a clone, so the SDK parses
// the very bytes that are reported. `result` is the SDK's parsed output, `usage` the usage it
// reports.

import Anthropic from "@anthropic-ai/sdk";
import { createAnthropic } from "@ai-sdk/anthropic";
import { createGoogleGenerativeAI } from "@ai-sdk/google";
import { createOpenAI } from "@ai-sdk/openai";
import { GoogleGenAI } from "@google/genai";
import { generateText, streamText } from "ai";
import OpenAI from "openai";

const MESSAGES = [{ role: "user", content: "Hi" }];
const PROMPT = "Hi";

let exchanges = [];
const pending = [];
const realFetch = globalThis.fetch;

// Every SDK here calls the global fetch (openai and the Vercel providers by default, google-genai
// always). The wrapper keeps a copy of each response's bytes without touching what the SDK reads.
globalThis.fetch = async (input, init) => {
  const response = await realFetch(input, init);
  const request = input instanceof Request ? input : null;
  const exchange = {
    method: (init && init.method) || (request && request.method) || "GET",
    url: String(request ? request.url : input),
    status: response.status,
    contentType: response.headers.get("content-type"),
    body: null,
  };
  exchanges.push(exchange);
  pending.push(
    response
      .clone()
      .arrayBuffer()
      .then((bytes) => {
        exchange.body = Buffer.from(bytes).toString("base64");
      }),
  );
  return response;
};

const customerHeader = (customer) => ({ "X-Costr-Customer": customer });

function openaiClient(target) {
  return new OpenAI({ baseURL: target.baseURL, apiKey: target.apiKey, maxRetries: 0 });
}

function anthropicClient(target) {
  return new Anthropic({ baseURL: target.baseURL, apiKey: target.apiKey, maxRetries: 0 });
}

function googleClient(target) {
  return new GoogleGenAI({
    apiKey: target.apiKey,
    apiVersion: "v1beta",
    httpOptions: { baseUrl: target.baseURL },
  });
}

// The Vercel providers take the API root: openai's and anthropic's end in /v1, google's in the
// API version.
function vercelOpenAI(target) {
  return createOpenAI({ baseURL: target.baseURL, apiKey: target.apiKey });
}

function vercelAnthropic(target) {
  return createAnthropic({ baseURL: `${target.baseURL}/v1`, apiKey: target.apiKey });
}

function vercelGoogle(target) {
  return createGoogleGenerativeAI({ baseURL: `${target.baseURL}/v1beta`, apiKey: target.apiKey });
}

async function vercelGenerate(model, customer) {
  const result = await generateText({
    model,
    prompt: PROMPT,
    headers: customerHeader(customer),
    maxRetries: 0,
  });
  return {
    result: {
      text: result.text,
      finishReason: result.finishReason,
      modelId: result.response.modelId,
    },
    usage: result.usage,
  };
}

async function vercelStream(model, customer) {
  const errors = [];
  const result = streamText({
    model,
    prompt: PROMPT,
    headers: customerHeader(customer),
    maxRetries: 0,
    onError: ({ error }) => errors.push(String(error)),
  });
  const parts = [];
  for await (const part of result.textStream) parts.push(part);
  if (errors.length) throw new Error(errors.join("; "));
  return {
    result: {
      parts,
      text: await result.text,
      finishReason: await result.finishReason,
      modelId: (await result.response).modelId,
    },
    usage: await result.usage,
  };
}

const SCENARIOS = {
  async "openai.chat"(targets, customer) {
    const completion = await openaiClient(targets.openai).chat.completions.create(
      { model: "gpt-4o-mini", messages: MESSAGES },
      { headers: customerHeader(customer) },
    );
    return { result: completion, usage: completion.usage };
  },

  // No stream_options: Costr asks for the usage itself and hides the extra chunk.
  async "openai.chat_stream"(targets, customer) {
    const stream = await openaiClient(targets.openai).chat.completions.create(
      { model: "gpt-4o-mini", messages: MESSAGES, stream: true },
      { headers: customerHeader(customer) },
    );
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    const usage = chunks.length ? (chunks[chunks.length - 1].usage ?? null) : null;
    return { result: chunks, usage };
  },

  async "openai.chat_stream_usage"(targets, customer) {
    const stream = await openaiClient(targets.openai).chat.completions.create(
      {
        model: "gpt-4o-mini",
        messages: MESSAGES,
        stream: true,
        stream_options: { include_usage: true },
      },
      { headers: customerHeader(customer) },
    );
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    return { result: chunks, usage: chunks[chunks.length - 1].usage };
  },

  async "openai.responses"(targets, customer) {
    const response = await openaiClient(targets.openai).responses.create(
      { model: "gpt-4.1", input: PROMPT },
      { headers: customerHeader(customer) },
    );
    return { result: { response, outputText: response.output_text }, usage: response.usage };
  },

  async "openai.responses_stream"(targets, customer) {
    const stream = await openaiClient(targets.openai).responses.create(
      { model: "gpt-4.1", input: PROMPT, stream: true },
      { headers: customerHeader(customer) },
    );
    const events = [];
    for await (const event of stream) events.push(event);
    const completed = events.find((event) => event.type === "response.completed");
    return { result: events, usage: completed ? completed.response.usage : null };
  },

  // The SDK asks for base64 and decodes it to floats.
  async "openai.embeddings"(targets, customer) {
    const embeddings = await openaiClient(targets.openai).embeddings.create(
      { model: "text-embedding-3-small", input: ["Hi", "there"] },
      { headers: customerHeader(customer) },
    );
    return { result: embeddings, usage: embeddings.usage };
  },

  async "anthropic.messages"(targets, customer) {
    const message = await anthropicClient(targets.anthropic).messages.create(
      { model: "claude-haiku-4-5-20251001", max_tokens: 100, messages: MESSAGES },
      { headers: customerHeader(customer) },
    );
    return { result: message, usage: message.usage };
  },

  async "anthropic.messages_stream"(targets, customer) {
    const stream = anthropicClient(targets.anthropic).messages.stream(
      { model: "claude-haiku-4-5-20251001", max_tokens: 100, messages: MESSAGES },
      { headers: customerHeader(customer) },
    );
    const texts = [];
    stream.on("text", (text) => texts.push(text));
    const message = await stream.finalMessage();
    return { result: { texts, message }, usage: message.usage };
  },

  async "anthropic.count_tokens"(targets, customer) {
    const count = await anthropicClient(targets.anthropic).messages.countTokens(
      { model: "claude-haiku-4-5-20251001", messages: MESSAGES },
      { headers: customerHeader(customer) },
    );
    return { result: count, usage: count };
  },

  async "google.generate"(targets, customer) {
    const response = await googleClient(targets.google).models.generateContent({
      model: "gemini-2.5-flash",
      contents: PROMPT,
      config: { httpOptions: { headers: customerHeader(customer) } },
    });
    return {
      result: { text: response.text, candidates: response.candidates },
      usage: response.usageMetadata,
    };
  },

  async "google.generate_stream"(targets, customer) {
    const stream = await googleClient(targets.google).models.generateContentStream({
      model: "gemini-2.5-flash",
      contents: PROMPT,
      config: { httpOptions: { headers: customerHeader(customer) } },
    });
    const chunks = [];
    for await (const chunk of stream) {
      chunks.push({ text: chunk.text ?? null, usage: chunk.usageMetadata ?? null });
    }
    return { result: chunks, usage: chunks[chunks.length - 1].usage };
  },

  // @ai-sdk/openai's default model is the Responses API; .chat() is Chat Completions.
  async "vercel.openai.generate"(targets, customer) {
    return vercelGenerate(vercelOpenAI(targets.openai)("gpt-4.1"), customer);
  },
  async "vercel.openai.stream"(targets, customer) {
    return vercelStream(vercelOpenAI(targets.openai)("gpt-4.1"), customer);
  },
  async "vercel.openai_chat.generate"(targets, customer) {
    return vercelGenerate(vercelOpenAI(targets.openai).chat("gpt-4o-mini"), customer);
  },
  async "vercel.openai_chat.stream"(targets, customer) {
    return vercelStream(vercelOpenAI(targets.openai).chat("gpt-4o-mini"), customer);
  },
  async "vercel.anthropic.generate"(targets, customer) {
    return vercelGenerate(vercelAnthropic(targets.anthropic)("claude-haiku-4-5-20251001"), customer);
  },
  async "vercel.anthropic.stream"(targets, customer) {
    return vercelStream(vercelAnthropic(targets.anthropic)("claude-haiku-4-5-20251001"), customer);
  },
  async "vercel.google.generate"(targets, customer) {
    return vercelGenerate(vercelGoogle(targets.google)("gemini-2.5-flash"), customer);
  },
  async "vercel.google.stream"(targets, customer) {
    return vercelStream(vercelGoogle(targets.google)("gemini-2.5-flash"), customer);
  },
};

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

async function runScenarios(targets, scenarios) {
  const report = {};
  for (const { name, customer } of scenarios) {
    const run = SCENARIOS[name];
    exchanges = [];
    if (!run) {
      report[name] = { error: `no scenario named ${name}` };
      continue;
    }
    try {
      const { result, usage } = await run(targets, customer);
      await Promise.all(pending.splice(0));
      report[name] = { exchanges, result, usage };
    } catch (error) {
      await Promise.allSettled(pending.splice(0));
      report[name] = { exchanges, error: String((error && error.stack) || error) };
    }
  }
  return report;
}

async function main() {
  const { runs } = await readStdin();
  const report = {};
  for (const { label, targets, scenarios } of runs) {
    report[label] = await runScenarios(targets, scenarios);
  }
  process.stdout.write(JSON.stringify(report));
}

main().catch((error) => {
  process.stderr.write(String((error && error.stack) || error) + "\n");
  process.exit(1);
});
