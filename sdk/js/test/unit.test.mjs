// The pure parts: credential scrubbing and the usage readers, on the providers' wire formats.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";

import { REDACTED, scrubRecord, scrubText } from "../dist/index.js";

test("scrubbing removes every kind of credential and keeps the rest", () => {
  const secrets = [
    "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    "sk-ant-api03-abcdefghijklmnopqrstu",
    "AIzaSyA1234567890abcdefghijklmnopqrstu",
    "Bearer abcdef0123456789",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "xoxb-1234567890-abcdefghij",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "github_pat_11ABCDEFG0abcdefghijklmnopqrstuvwxyz",
    "costr_abcdefghijklmnop",
  ];
  for (const secret of secrets) {
    assert.equal(scrubText(`before ${secret} after`), `before ${REDACTED} after`, secret);
  }
  assert.equal(scrubText("plain words, gpt-4o-mini, task-42"), "plain words, gpt-4o-mini, task-42");
  // A configured secret of any shape.
  assert.equal(scrubText("my key is hunter2hunter2", ["hunter2hunter2"]), `my key is ${REDACTED}`);
  const record = scrubRecord({
    event_id: "sdk_1",
    customer: "acme sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    properties: { "ghp_abcdefghijklmnopqrstuvwxyz0123456789": "x", note: "Bearer abcdef0123456789" },
    input_tokens: 3,
  });
  assert.deepEqual(record, {
    event_id: "sdk_1",
    customer: `acme ${REDACTED}`,
    properties: { [REDACTED]: "x", note: REDACTED },
    input_tokens: 3,
  });
});

test("the CJS build loads, and its helpers build the caller's own client classes", async () => {
  const require = createRequire(import.meta.url);
  const sdk = require("../dist/index.cjs");
  const { OpenAI } = require("openai");
  sdk.configure({ url: "http://127.0.0.1:9", org: "acme", token: "costr_x", spoolDir: "/tmp/costr-sdkjs-unit" });
  const client = await sdk.createOpenAI();
  assert.ok(client instanceof OpenAI, "the CommonJS class, as require('openai').OpenAI gives it");
  assert.equal(client.baseURL, "http://127.0.0.1:9/p/acme/openai/v1");
  sdk.getClient().close();
});
