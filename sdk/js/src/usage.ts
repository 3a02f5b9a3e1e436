/**
 * What a direct call was and what it used, read in passing: the endpoint and model from the
 * request, the token counts from the response (a JSON body or an SSE stream, per provider), as
 * the proxy's adapters read them (apps/proxy/providers/). Only counts and the model name are
 * kept; never a prompt or a completion.
 */
import type { Provider } from "./config.js";

export interface Usage {
  input_tokens: number | null;
  cached_input_tokens: number | null;
  cache_write_tokens: number | null;
  cache_write_1h_tokens: number | null;
  output_tokens: number | null;
  reasoning_tokens: number | null;
}

export interface RequestInfo {
  endpoint: string;
  model: string | null;
  stream: boolean;
}

const OPENAI_ENDPOINTS: Record<string, string> = {
  "v1/chat/completions": "chat",
  "v1/responses": "responses",
  "v1/embeddings": "embeddings",
  "v1/completions": "completions",
  "v1/audio/transcriptions": "transcriptions",
  "v1/audio/translations": "translations",
  "v1/audio/speech": "speech",
};
const ANTHROPIC_ENDPOINTS: Record<string, string> = {
  "v1/messages": "messages",
  "v1/messages/count_tokens": "count_tokens",
};
const GEMINI_PATH = /^v1(?:alpha|beta)?\/(models|tunedModels)\/([^/:]+):(\w+)$/;
const GEMINI_ENDPOINTS: Record<string, string> = {
  generateContent: "generate",
  streamGenerateContent: "generate",
  embedContent: "embed",
  batchEmbedContents: "embed",
  countTokens: "count_tokens",
};
/** Endpoints whose successful response carries the usage that bills them. */
const METERED = new Set(["chat", "responses", "embeddings", "completions", "messages", "generate", "embed", "transcriptions", "translations", "speech"]);

export function isMetered(endpoint: string): boolean {
  return METERED.has(endpoint);
}

function bodyFields(body: unknown): { model: string | null; stream: boolean } {
  if (typeof body !== "object" || body === null) return { model: null, stream: false };
  const { model, stream } = body as { model?: unknown; stream?: unknown };
  return { model: typeof model === "string" ? model : null, stream: stream === true };
}

/** `path` is the provider's own path (`/v1/chat/completions`), `json` the parsed request body. */
export function inspectRequest(provider: Provider, method: string, path: string, json: unknown): RequestInfo {
  const trimmed = path.replace(/^\/+|\/+$/g, "");
  if (provider === "google") {
    let decoded = trimmed;
    try {
      decoded = decodeURIComponent(trimmed);
    } catch {
      // A malformed escape: matched as sent.
    }
    const match = GEMINI_PATH.exec(decoded);
    if (!match) return { endpoint: "other", model: null, stream: false };
    const [, collection, name, modelMethod] = match;
    const model = collection === "tunedModels" ? `tunedModels/${name}` : name!;
    if (method !== "POST") return { endpoint: "other", model, stream: false };
    return {
      endpoint: GEMINI_ENDPOINTS[modelMethod!] ?? "other",
      model,
      stream: modelMethod === "streamGenerateContent",
    };
  }
  const table = provider === "openai" ? OPENAI_ENDPOINTS : ANTHROPIC_ENDPOINTS;
  if (method !== "POST") return { endpoint: "other", model: null, stream: false };
  return { endpoint: table[trimmed] ?? "other", ...bodyFields(json) };
}

function count(object: unknown, key: string): number | null {
  if (typeof object !== "object" || object === null) return null;
  const value = (object as Record<string, unknown>)[key];
  return typeof value === "number" && Number.isInteger(value) && value >= 0 ? value : null;
}

function detail(parent: number | null, details: unknown, key: string): number | null {
  if (parent === null) return null;
  return count(details, key) ?? 0;
}

export function emptyUsage(): Usage {
  return {
    input_tokens: null,
    cached_input_tokens: null,
    cache_write_tokens: null,
    cache_write_1h_tokens: null,
    output_tokens: null,
    reasoning_tokens: null,
  };
}

/** An OpenAI `usage` object in Chat Completions or Responses naming (embeddings: input only). */
export function usageFromOpenAI(raw: unknown): Usage | null {
  if (typeof raw !== "object" || raw === null) return null;
  const usage = raw as Record<string, unknown>;
  const responsesNaming = "input_tokens" in usage || "output_tokens" in usage;
  const input = count(usage, responsesNaming ? "input_tokens" : "prompt_tokens");
  const output = count(usage, responsesNaming ? "output_tokens" : "completion_tokens");
  const inputDetails = usage[responsesNaming ? "input_tokens_details" : "prompt_tokens_details"];
  const outputDetails = usage[responsesNaming ? "output_tokens_details" : "completion_tokens_details"];
  return {
    input_tokens: input,
    cached_input_tokens: detail(input, inputDetails, "cached_tokens"),
    cache_write_tokens: detail(input, inputDetails, "cache_write_tokens"),
    cache_write_1h_tokens: null,
    output_tokens: output,
    reasoning_tokens: detail(output, outputDetails, "reasoning_tokens"),
  };
}

/** An Anthropic `usage` object: its `input_tokens` excludes cache reads and writes. */
export function usageFromAnthropic(raw: unknown): Usage | null {
  if (typeof raw !== "object" || raw === null) return null;
  const usage = raw as Record<string, unknown>;
  const uncached = count(usage, "input_tokens");
  const writes = count(usage, "cache_creation_input_tokens");
  const reads = count(usage, "cache_read_input_tokens");
  const result = emptyUsage();
  if (uncached !== null || writes !== null || reads !== null) {
    result.cached_input_tokens = reads ?? 0;
    result.cache_write_tokens = writes ?? 0;
    result.input_tokens = (uncached ?? 0) + (writes ?? 0) + (reads ?? 0);
    result.cache_write_1h_tokens = count(usage.cache_creation, "ephemeral_1h_input_tokens") ?? 0;
  }
  result.output_tokens = count(usage, "output_tokens");
  result.reasoning_tokens = count(usage.output_tokens_details, "thinking_tokens");
  return result;
}

/** A Gemini `usageMetadata` (omitted counts are zeros; output is candidates + thoughts). */
export function usageFromGemini(raw: unknown): Usage | null {
  if (typeof raw !== "object" || raw === null) return null;
  const thoughts = count(raw, "thoughtsTokenCount") ?? 0;
  return {
    input_tokens: (count(raw, "promptTokenCount") ?? 0) + (count(raw, "toolUsePromptTokenCount") ?? 0),
    cached_input_tokens: count(raw, "cachedContentTokenCount") ?? 0,
    cache_write_tokens: null,
    cache_write_1h_tokens: null,
    output_tokens: (count(raw, "candidatesTokenCount") ?? 0) + thoughts,
    reasoning_tokens: thoughts,
  };
}

// A whole JSON body is kept only up to this size to find its usage; past it the call is
// recorded without usage (an embeddings list that large is rare, and it is never stored).
const MAX_JSON_BYTES = 32 * 1024 * 1024;

/**
 * Reads usage from a response body fed chunk by chunk. `feed` returns the bytes to hand on to
 * the caller: the chunk itself, except when `stripUsageChunk` asks to drop the final OpenAI
 * chat usage chunk the fallback requested on the caller's behalf (as the proxy does).
 */
export class UsageReader {
  model: string | null = null;
  usage: Usage | null = null;
  private readonly sse: boolean;
  private readonly decoder = new TextDecoder();
  private pending = "";
  private jsonParts: Uint8Array[] = [];
  private jsonBytes = 0;
  private anthropicUsage: Record<string, unknown> | null = null;
  private readonly encoder = new TextEncoder();

  constructor(
    private readonly provider: Provider,
    private readonly endpoint: string,
    contentType: string,
    private readonly stripUsageChunk = false,
  ) {
    this.sse = contentType.toLowerCase().includes("text/event-stream");
  }

  feed(chunk: Uint8Array): Uint8Array {
    if (!this.sse) {
      if (this.jsonBytes + chunk.byteLength <= MAX_JSON_BYTES) this.jsonParts.push(chunk);
      this.jsonBytes += chunk.byteLength;
      return chunk;
    }
    this.pending += this.decoder.decode(chunk, { stream: true });
    if (!this.stripUsageChunk) {
      this.drainEvents();
      return chunk;
    }
    return this.encoder.encode(this.drainEvents());
  }

  /** Called once the body has ended (or was cancelled): the bytes still to hand on. */
  finish(): Uint8Array | null {
    if (!this.sse) {
      if (this.jsonBytes <= MAX_JSON_BYTES) this.readJson();
      this.jsonParts = [];
      return null;
    }
    this.pending += this.decoder.decode();
    let kept = this.drainEvents();
    if (this.pending) {
      const rest = this.pending;
      this.pending = "";
      if (this.onEvent(rest)) kept += rest;
    }
    return this.stripUsageChunk && kept ? this.encoder.encode(kept) : null;
  }

  /** Handles every complete event in `pending`; returns the text of those to keep. */
  private drainEvents(): string {
    let kept = "";
    for (;;) {
      const match = /\r\n\r\n|\n\n|\r\r/.exec(this.pending);
      if (!match) return kept;
      const end = match.index + match[0].length;
      const event = this.pending.slice(0, end);
      this.pending = this.pending.slice(end);
      if (this.onEvent(event)) kept += event;
    }
  }

  /** Reads one SSE event; false when it is the usage chunk to drop. */
  private onEvent(event: string): boolean {
    let name = "";
    const data: string[] = [];
    for (const line of event.split(/\r\n|\r|\n/)) {
      if (line.startsWith("data:")) data.push(line.slice(line[5] === " " ? 6 : 5));
      else if (line.startsWith("event:")) name = line.slice(6).trim();
    }
    if (!data.length) return true;
    const text = data.join("\n");
    if (text === "[DONE]") return true;
    try {
      return this.onData(name, text);
    } catch {
      return true;
    }
  }

  private onData(name: string, text: string): boolean {
    if (this.provider === "openai") {
      if (this.endpoint === "responses") {
        if (!/^response\.(completed|incomplete|failed)$/.test(name) && !/"type"\s*:\s*"response\.(completed|incomplete|failed)"/.test(text)) {
          if (this.model === null && /"model"/.test(text)) this.takeModel(JSON.parse(text)?.response?.model);
          return true;
        }
        const response = JSON.parse(text)?.response;
        this.takeModel(response?.model);
        this.usage = usageFromOpenAI(response?.usage) ?? this.usage;
        return true;
      }
      // Chat and legacy completions: the model on the first chunk, usage on the last.
      if (this.model !== null && !/"usage"\s*:\s*\{/.test(text)) return true;
      const chunk = JSON.parse(text);
      this.takeModel(chunk?.model);
      const usage = usageFromOpenAI(chunk?.usage);
      if (usage) this.usage = usage;
      const isUsageChunk = usage !== null && Array.isArray(chunk?.choices) && chunk.choices.length === 0;
      return !(this.stripUsageChunk && isUsageChunk);
    }
    if (this.provider === "anthropic") {
      if (!/"message_(start|delta)"/.test(text)) return true;
      const event = JSON.parse(text);
      if (event?.type === "message_start") {
        this.takeModel(event.message?.model);
        this.anthropicUsage = { ...(event.message?.usage ?? {}) };
      } else if (event?.type === "message_delta" && event.usage) {
        const merged: Record<string, unknown> = { ...(this.anthropicUsage ?? {}) };
        for (const [key, value] of Object.entries(event.usage as Record<string, unknown>)) {
          if (value !== null && value !== undefined) merged[key] = value;
        }
        this.anthropicUsage = merged;
      }
      this.usage = usageFromAnthropic(this.anthropicUsage);
      return true;
    }
    // Gemini: running totals on each chunk; the last one counts.
    if (!/"usageMetadata"|"modelVersion"/.test(text)) return true;
    const chunk = JSON.parse(text);
    this.takeModel(chunk?.modelVersion);
    if (chunk?.usageMetadata) this.usage = usageFromGemini(chunk.usageMetadata);
    return true;
  }

  private takeModel(value: unknown): void {
    if (typeof value === "string" && value) this.model = value;
  }

  private readJson(): void {
    if (!this.jsonBytes) return;
    let document: unknown;
    try {
      document = JSON.parse(Buffer.concat(this.jsonParts).toString("utf8"));
    } catch {
      return;
    }
    if (this.provider === "google") {
      // Without alt=sse, streamGenerateContent answers a JSON array of chunks (running totals).
      const chunks = Array.isArray(document) ? document : [document];
      for (const chunk of chunks) {
        if (typeof chunk !== "object" || chunk === null) continue;
        const { usageMetadata, modelVersion } = chunk as Record<string, unknown>;
        this.takeModel(modelVersion);
        if (usageMetadata) this.usage = usageFromGemini(usageMetadata);
      }
      return;
    }
    if (typeof document !== "object" || document === null) return;
    const body = document as Record<string, unknown>;
    this.takeModel(body.model);
    this.usage = this.provider === "openai" ? usageFromOpenAI(body.usage) : usageFromAnthropic(body.usage);
  }
}
