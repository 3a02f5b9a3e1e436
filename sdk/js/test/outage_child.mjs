// A process that makes calls while Costr is down and exits before Costr is back: its records
// must wait in the spool for the next process. Settings come from the environment, as a
// deployment sets them (COSTR_URL, COSTR_ORG, COSTR_TOKEN, COSTR_FALLBACK_*, COSTR_SDK_*).
import { createAnthropic, createOpenAI, getClient, withCustomer } from "../dist/index.js";

const openai = await createOpenAI({ maxRetries: 0 });
const anthropic = await createAnthropic({ maxRetries: 0 });
const chat = await withCustomer("child-openai", () =>
  openai.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] }),
);
const message = await withCustomer("child-anthropic", () =>
  anthropic.messages.create({ model: "claude-haiku-4-5-20251001", max_tokens: 100, messages: [{ role: "user", content: "Hi" }] }),
);
// The stream of the direct answer is read to its end before the record exists; give the
// spool's append its turn, then leave without flushing, as a process killed by a deploy would.
await new Promise((done) => setTimeout(done, 200));
process.stdout.write(JSON.stringify({ chat: chat.choices[0].message.content, message: message.content[0].text, pending: getClient().pendingRecords, circuitOpen: getClient().circuitOpen }));
process.exit(0);
