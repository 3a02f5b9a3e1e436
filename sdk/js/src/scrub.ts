/**
 * Credential scrubbing of everything the SDK sends to Costr: a backfill record holds counts,
 * names and the caller's customer and properties, and a careless property value could still
 * hold a key. The patterns are CostKey's list (OpenAI and Anthropic keys, Google API keys,
 * bearer tokens, JWTs, Slack and GitHub tokens) plus Costr's own tokens.
 */
import type { IngestRecord } from "./config.js";

export const REDACTED = "[REDACTED]";

const PATTERNS: readonly RegExp[] = [
  /sk-ant-[A-Za-z0-9_-]{8,}/g,
  /sk-[A-Za-z0-9_-]{16,}/g,
  /AIza[0-9A-Za-z_-]{30,}/g,
  /costr_[A-Za-z0-9_-]{8,}/g,
  /\bBearer\s+[A-Za-z0-9._~+/=-]{8,}/gi,
  /eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}/g,
  /xox[abposr]-[A-Za-z0-9-]{8,}/g,
  /gh[pousr]_[A-Za-z0-9]{20,}/g,
  /github_pat_[A-Za-z0-9_]{20,}/g,
];

export function scrubText(value: string, secrets: readonly string[] = []): string {
  let text = value;
  for (const secret of secrets) {
    if (secret && secret.length >= 8 && text.includes(secret)) text = text.split(secret).join(REDACTED);
  }
  for (const pattern of PATTERNS) {
    pattern.lastIndex = 0;
    if (pattern.test(text)) {
      pattern.lastIndex = 0;
      text = text.replace(pattern, REDACTED);
    }
  }
  return text;
}

/** A copy of `record` whose every string (property names included) is scrubbed. */
export function scrubRecord(record: IngestRecord, secrets: readonly string[] = []): IngestRecord {
  const scrubbed: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(record)) {
    if (typeof value === "string") {
      scrubbed[name] = scrubText(value, secrets);
    } else if (value && typeof value === "object" && !Array.isArray(value)) {
      const inner: Record<string, unknown> = {};
      for (const [key, item] of Object.entries(value as Record<string, unknown>)) {
        inner[scrubText(key, secrets)] = typeof item === "string" ? scrubText(item, secrets) : item;
      }
      scrubbed[name] = inner;
    } else {
      scrubbed[name] = value;
    }
  }
  return scrubbed as unknown as IngestRecord;
}
