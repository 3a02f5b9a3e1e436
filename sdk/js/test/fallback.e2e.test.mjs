// End to end: the SDK against a real Costr that is stopped and started again, and the fake
// provider both behind Costr and as the direct target (DESIGN.md, "Client SDKs: fail-open when
// Costr is down"). Every call must end as exactly one usage event, read back through the
// reporting API, with its customer, tokens and the cost genai-prices gives the fake's usage.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import diagnostics from "node:diagnostics_channel";
import { readdirSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import { generateText, streamText } from "ai";
import OpenAI from "openai";

import {
  configure,
  createAnthropic,
  createGoogleGenAI,
  createOpenAI,
  createVercelOpenAI,
  flush,
  getClient,
  SOURCE,
  withCustomer,
} from "../dist/index.js";
import { Costr, expectedUsage, FAKE_KEYS, SDK_DIR, startBlackHole, startFakeProvider, tempDir } from "./harness.mjs";

const MESSAGES = [{ role: "user", content: "Hi" }];
const OPENAI_CHAT = { provider: "openai", endpoint: "chat", model: "gpt-4o-mini" };
const OPENAI_RESPONSES = { provider: "openai", endpoint: "responses", model: "gpt-4.1" };
const ANTHROPIC = { provider: "anthropic", endpoint: "messages", model: "claude-haiku-4-5-20251001" };
const GEMINI = { provider: "google", endpoint: "generate", model: "gemini-2.5-flash" };

// Every request the SDK's own HTTP client (undici, the npm package) starts, by path, and every
// failed connection, by error code: what went to Costr, observed, not assumed.
const toCostr = [];
const connectErrors = [];
diagnostics.subscribe("undici:request:create", ({ request }) => toCostr.push(`${request.origin}${request.path}`));
diagnostics.subscribe("undici:client:connectError", ({ error }) => connectErrors.push(error?.code));

let fake;
let costr;
let spoolDir;
// customer -> the call it stands for, and whether it went through Costr or straight.
const calls = new Map();

function settings(extra = {}) {
  return {
    url: costr.url,
    org: costr.org,
    token: costr.token,
    fallbackKeys: FAKE_KEYS,
    fallbackBaseUrls: { openai: fake.url, anthropic: fake.url, google: fake.url },
    connectTimeout: 0.5,
    probeInterval: 0.2,
    spoolDir,
    ...extra,
  };
}

function normalDecimal(value) {
  return value === null ? null : String(value).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
}

before(async () => {
  fake = await startFakeProvider();
  costr = new Costr(fake.url);
  await costr.setUp("sdkjs");
  await costr.start();
  spoolDir = tempDir("costr-sdkjs-spool-");
});

after(async () => {
  await costr?.destroy();
  await fake?.stop();
});

describe("the SDK with Costr up, down and back", () => {
  test("with Costr up, calls go through Costr with the customer of their context", async () => {
    configure(settings({ beforeSend: (record) => ({ ...record, properties: { ...record.properties, via: "backfill" } }) }));
    const openai = await createOpenAI({ maxRetries: 0 });
    const { data, response } = await withCustomer("up-openai", { feature: "summaries" }, () =>
      openai.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES }).withResponse(),
    );
    assert.equal(data.choices[0].message.content, "Hello from the fake provider");
    assert.ok(response.headers.get("x-costr-request-id"), "answered by Costr");
    assert.equal(getClient().circuitOpen, false);
    calls.set("up-openai", { ...OPENAI_CHAT, properties: { feature: "summaries" } });
  });

  test("a refusal by Costr is the caller's answer, never a fallback", async () => {
    const before = toCostr.length;
    const openai = new OpenAI({
      ...(await createOpenAI()),
      baseURL: `${costr.url}/p/${costr.org}/openai/v1`,
      apiKey: "costr_not_a_valid_token_at_all",
      fetch: getClient().fetch,
      maxRetries: 0,
    });
    await assert.rejects(
      withCustomer("refused", () => openai.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES })),
      (error) => error.status === 401 && error.headers.get("x-costr-error") !== null,
    );
    assert.equal(toCostr.length - before, 1, "one request, to Costr");
    assert.equal(getClient().circuitOpen, false);
    assert.equal(getClient().pendingRecords, 0, "no direct call, so nothing to backfill");
  });

  test("a provider's 429 reaches the caller through Costr, never a fallback", async () => {
    const anthropic = await createAnthropic({ maxRetries: 0 });
    await assert.rejects(
      withCustomer("up-429", () =>
        anthropic.messages.create(
          { model: ANTHROPIC.model, max_tokens: 100, messages: MESSAGES },
          { headers: { "x-fake-status": "429" } },
        ),
      ),
      (error) => error.status === 429 && error.headers.get("x-costr-request-id") !== null,
    );
    assert.equal(getClient().circuitOpen, false);
    assert.equal(getClient().pendingRecords, 0);
    calls.set("up-429", { ...ANTHROPIC, status: 429 });
  });

  test("with Costr stopped, each client's calls succeed straight at the provider", async () => {
    await costr.stop();
    const openai = await createOpenAI({ maxRetries: 0 });
    const anthropic = await createAnthropic({ maxRetries: 0 });
    const google = await createGoogleGenAI({ apiVersion: "v1beta" });
    const vercel = await createVercelOpenAI();
    const before = toCostr.filter((url) => url.includes("/p/")).length;

    const chat = await withCustomer("down-openai", { note: "key sk-proj-abcdefghijklmnopqrstuvwxyz012345 pasted" }, () =>
      openai.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES }),
    );
    assert.equal(chat.choices[0].message.content, "Hello from the fake provider");
    assert.equal(getClient().circuitOpen, true);
    calls.set("down-openai", { ...OPENAI_CHAT, properties: { note: "key [REDACTED] pasted" } });

    // A stream without include_usage: the fallback asks for the usage, as Costr would, and the
    // caller never sees the extra chunk.
    const chunks = [];
    await withCustomer("down-openai-stream", async () => {
      const stream = await openai.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES, stream: true });
      for await (const chunk of stream) chunks.push(chunk);
    });
    assert.equal(chunks.map((chunk) => chunk.choices[0]?.delta?.content ?? "").join(""), "Hello from the fake provider");
    assert.ok(chunks.every((chunk) => chunk.choices.length === 1), "no usage chunk reached the caller");
    calls.set("down-openai-stream", OPENAI_CHAT);

    const message = await withCustomer("down-anthropic", () =>
      anthropic.messages.create({ model: ANTHROPIC.model, max_tokens: 100, messages: MESSAGES }),
    );
    assert.equal(message.content[0].text, "Hello from the fake provider");
    calls.set("down-anthropic", ANTHROPIC);

    const texts = [];
    const streamed = await withCustomer("down-anthropic-stream", () => {
      const stream = anthropic.messages.stream({ model: ANTHROPIC.model, max_tokens: 100, messages: MESSAGES });
      stream.on("text", (text) => texts.push(text));
      return stream.finalMessage();
    });
    assert.equal(texts.join(""), "Hello from the fake provider");
    assert.equal(streamed.usage.output_tokens, 300);
    calls.set("down-anthropic-stream", ANTHROPIC);

    const generated = await withCustomer("down-google", () =>
      google.models.generateContent({ model: GEMINI.model, contents: "Hi" }),
    );
    assert.equal(generated.text, "Hello from the fake provider");
    calls.set("down-google", GEMINI);

    const pieces = [];
    await withCustomer("down-google-stream", async () => {
      const stream = await google.models.generateContentStream({ model: GEMINI.model, contents: "Hi" });
      for await (const chunk of stream) pieces.push(chunk.text ?? "");
    });
    assert.equal(pieces.join(""), "Hello from the fake provider");
    calls.set("down-google-stream", GEMINI);

    const vercelText = await withCustomer("down-vercel", () => generateText({ model: vercel("gpt-4.1"), prompt: "Hi", maxRetries: 0 }));
    assert.equal(vercelText.text, "Hello from the fake provider");
    calls.set("down-vercel", OPENAI_RESPONSES);

    const vercelStream = withCustomer("down-vercel-stream", () =>
      streamText({ model: vercel.chat("gpt-4o-mini"), prompt: "Hi", maxRetries: 0 }),
    );
    let vercelStreamed = "";
    for await (const part of vercelStream.textStream) vercelStreamed += part;
    assert.equal(vercelStreamed, "Hello from the fake provider");
    calls.set("down-vercel-stream", OPENAI_CHAT);

    // The circuit: only the first call tried Costr; the seven after it went straight.
    const triedCostr = toCostr.filter((url) => url.includes("/p/")).length - before;
    assert.equal(triedCostr, 1);
    assert.equal(getClient().pendingRecords, 8);
  });

  test("a process that exits during the outage leaves its records to the next one", () => {
    const childSpool = tempDir("costr-sdkjs-child-spool-");
    const child = spawnSync(process.execPath, ["test/outage_child.mjs"], {
      cwd: SDK_DIR,
      encoding: "utf8",
      timeout: 60_000,
      env: {
        PATH: process.env.PATH,
        HOME: process.env.HOME,
        COSTR_URL: costr.url,
        COSTR_ORG: costr.org,
        COSTR_TOKEN: costr.token,
        COSTR_FALLBACK_OPENAI_KEY: FAKE_KEYS.openai,
        COSTR_FALLBACK_ANTHROPIC_KEY: FAKE_KEYS.anthropic,
        COSTR_FALLBACK_OPENAI_BASE_URL: fake.url,
        COSTR_FALLBACK_ANTHROPIC_BASE_URL: fake.url,
        COSTR_SDK_CONNECT_TIMEOUT: "0.5",
        COSTR_SDK_SPOOL_DIR: childSpool,
      },
    });
    assert.equal(child.status, 0, child.stderr);
    const report = JSON.parse(child.stdout);
    assert.deepEqual(report, {
      chat: "Hello from the fake provider",
      message: "Hello from the fake provider",
      pending: 2,
      circuitOpen: true,
    });
    assert.equal(readdirSync(childSpool).length, 1, "its records wait on disk");
    calls.set("child-openai", OPENAI_CHAT);
    calls.set("child-anthropic", ANTHROPIC);
    calls.childSpool = childSpool;
  });

  test("when Costr is back, the backfill delivers every record, the exited process's too", async () => {
    await costr.start();
    assert.equal(await flush(30), true);
    assert.equal(getClient().circuitOpen, false);
    assert.equal(getClient().pendingRecords, 0);
    assert.deepEqual(readdirSync(spoolDir), [], "the spool is empty once Costr has everything");

    // The next process with the exited one's spool.
    configure(settings({ spoolDir: calls.childSpool }));
    assert.equal(await flush(30), true);
    assert.deepEqual(readdirSync(calls.childSpool), []);
    // A second flush sends nothing again.
    assert.equal(await flush(5), true);
  });

  test("every call is exactly one event with its customer, tokens and cost", async () => {
    const expectedCount = calls.size;
    let events = [];
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      events = await costr.events();
      if (events.length >= expectedCount) break;
      await new Promise((done) => setTimeout(done, 100));
    }
    const byCustomer = new Map();
    for (const event of events) byCustomer.set(event.customer, [...(byCustomer.get(event.customer) ?? []), event]);
    assert.deepEqual([...byCustomer.keys()].sort(), [...calls.keys()].sort());

    const ordered = [...calls.entries()].map(([customer, call]) => {
      const found = byCustomer.get(customer);
      assert.equal(found.length, 1, `${customer}: ${found.length} events`);
      return { customer, call, event: found[0] };
    });
    const priced = ordered.filter(({ call }) => (call.status ?? 200) === 200);
    const expected = expectedUsage(
      priced.map(({ call, event }) => ({ provider: call.provider, endpoint: call.endpoint, model: call.model, timestamp: event.timestamp })),
    );
    priced.forEach(({ customer, call, event }, index) => {
      const want = expected[index];
      const direct = customer !== "up-openai";
      assert.deepEqual(
        {
          provider: event.provider,
          endpoint: event.endpoint,
          model: event.model,
          status: event.status,
          outcome: event.outcome,
          input_tokens: event.input_tokens,
          cached_input_tokens: event.cached_input_tokens ?? 0,
          cache_write_tokens: event.cache_write_tokens ?? 0,
          cache_write_1h_tokens: event.cache_write_1h_tokens ?? 0,
          output_tokens: event.output_tokens,
          reasoning_tokens: event.reasoning_tokens ?? 0,
          cost_usd: normalDecimal(event.cost_usd),
          price_source: event.price_source,
        },
        {
          provider: call.provider,
          endpoint: call.endpoint,
          model: call.model,
          status: 200,
          outcome: "ok",
          input_tokens: want.input_tokens,
          cached_input_tokens: want.cached_input_tokens,
          cache_write_tokens: want.cache_write_tokens,
          cache_write_1h_tokens: want.cache_write_1h_tokens,
          output_tokens: want.output_tokens,
          reasoning_tokens: want.reasoning_tokens,
          cost_usd: normalDecimal(want.cost_usd),
          price_source: "catalog",
        },
        customer,
      );
      const properties = { ...(call.properties ?? {}), ...(direct && !customer.startsWith("child") ? { via: "backfill" } : {}) };
      assert.deepEqual(event.properties, properties, customer);
      assert.equal(event.source, direct ? SOURCE : "proxy", customer);
    });
    const rateLimited = byCustomer.get("up-429")[0];
    assert.deepEqual([rateLimited.status, rateLimited.outcome, rateLimited.cost_usd !== null && Number(rateLimited.cost_usd)], [429, "upstream_error", 0]);
  });
});

describe("an outage where Costr's host stops answering", () => {
  test("costs one connect timeout, not one per call", async () => {
    const hole = await startBlackHole();
    try {
      configure(settings({ url: `http://127.0.0.1:${hole.port}`, spoolDir: tempDir("costr-sdkjs-hole-"), probeInterval: 60 }));
      const openai = await createOpenAI({ maxRetries: 0 });
      const timeoutsBefore = connectErrors.filter((code) => code === "UND_ERR_CONNECT_TIMEOUT").length;
      for (let index = 0; index < 3; index += 1) {
        const completion = await openai.chat.completions.create({ model: "gpt-4o-mini", messages: MESSAGES });
        assert.equal(completion.choices[0].message.content, "Hello from the fake provider");
      }
      const timeouts = connectErrors.filter((code) => code === "UND_ERR_CONNECT_TIMEOUT").length - timeoutsBefore;
      assert.equal(timeouts, 1);
      assert.equal(getClient().pendingRecords, 3);
    } finally {
      hole.stop();
      getClient().close();
    }
  });
});
