/**
 * One configured Costr: the fetch that goes through Costr and falls back to the provider, the
 * circuit that keeps calls direct during an outage, and the backfill of the direct calls'
 * usage. State lives on this object; `configure()` makes a new one.
 */
import { randomUUID } from "node:crypto";

import { Agent, fetch as undiciFetch } from "undici";

import { Backfill, type PostOutcome } from "./backfill.js";
import { PROVIDERS, type IngestRecord, type Provider, type ResolvedConfig } from "./config.js";
import { applyContextHeaders, CUSTOMER_HEADER, PROPERTY_HEADER } from "./context.js";
import { Spool } from "./spool.js";
import { emptyUsage, inspectRequest, isMetered, UsageReader, type Usage } from "./usage.js";

const COSTR_HEADER = /^x-costr-/i;
const COSTR_TOKEN = /costr_[A-Za-z0-9_-]+/;
const MAX_CUSTOMER = 255;
const MAX_PROPERTY_NAME = 64;
const MAX_PROPERTY_VALUE = 255;
const MAX_PROPERTIES = 20;
const MAX_MODEL = 255;
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/** Errors that mean the connection to Costr was never made: the request cannot have reached
 * Costr, so sending it to the provider instead cannot run it twice. */
const CONNECT_FAILURES = new Set([
  "ECONNREFUSED",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EHOSTDOWN",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EADDRNOTAVAIL",
  "ETIMEDOUT",
  "UND_ERR_CONNECT_TIMEOUT",
]);

export function isConnectFailure(error: unknown): boolean {
  let current: unknown = error;
  for (let depth = 0; depth < 4 && current; depth += 1) {
    const { code, errors } = current as { code?: unknown; errors?: unknown };
    if (typeof code === "string" && CONNECT_FAILURES.has(code)) return true;
    if (Array.isArray(errors) && errors.some((inner) => isConnectFailure(inner))) return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

type Body = string | Uint8Array | ArrayBuffer | null;

interface PreparedRequest {
  method: string;
  headers: Headers;
  body: Body;
  signal?: AbortSignal | null;
  redirect?: RequestRedirect;
}

function isReplayable(body: unknown): body is Body {
  return body === null || body === undefined || typeof body === "string" || body instanceof Uint8Array || body instanceof ArrayBuffer;
}

/** The call's method, headers and a body that can be sent twice (a stream is read whole:
 * request bodies of these APIs are small, and a fallback must send the same bytes again). */
async function prepare(url: string, input: RequestInfo | URL, init: RequestInit | undefined): Promise<PreparedRequest> {
  if (input instanceof Request) {
    const merged = new Request(input, init);
    const body = merged.body ? new Uint8Array(await merged.arrayBuffer()) : null;
    return { method: merged.method, headers: new Headers(merged.headers), body, signal: init?.signal ?? input.signal, redirect: merged.redirect };
  }
  const method = (init?.method ?? "GET").toUpperCase();
  const headers = new Headers(init?.headers);
  let body: Body = null;
  const raw = init?.body;
  if (isReplayable(raw)) {
    body = raw ?? null;
  } else {
    // FormData, Blob, URLSearchParams, streams: as fetch would encode them, content type too.
    const request = new Request(url, { method, headers, body: raw, duplex: "half" } as RequestInit);
    body = new Uint8Array(await request.arrayBuffer());
    const type = request.headers.get("content-type");
    if (type) headers.set("content-type", type);
  }
  return { method, headers, body, signal: init?.signal ?? null, redirect: init?.redirect };
}

function bodyText(body: Body): string | null {
  if (body === null) return null;
  if (typeof body === "string") return body;
  return Buffer.from(body instanceof ArrayBuffer ? new Uint8Array(body) : body).toString("utf8");
}

function attribution(headers: Headers): { customer: string | null; properties: Record<string, string> } {
  const customer = headers.get(CUSTOMER_HEADER)?.trim().slice(0, MAX_CUSTOMER) || null;
  const properties: Record<string, string> = {};
  let count = 0;
  headers.forEach((value, name) => {
    if (!name.startsWith(PROPERTY_HEADER) || count >= MAX_PROPERTIES) return;
    const key = name.slice(PROPERTY_HEADER.length);
    if (!key || key.length > MAX_PROPERTY_NAME) return;
    properties[key] = value.trim().slice(0, MAX_PROPERTY_VALUE);
    count += 1;
  });
  return { customer, properties };
}

export class CostrClient {
  readonly config: ResolvedConfig;
  private readonly agent: Agent;
  private readonly backfill: Backfill;
  private open = false;
  private probeTimer: NodeJS.Timeout | null = null;
  private probing: Promise<boolean> | null = null;
  private stopped = false;

  constructor(config: ResolvedConfig) {
    this.config = config;
    // One pool for the calls to Costr, with the connect timeout that decides a fallback.
    this.agent = new Agent({ connect: { timeout: config.connectTimeoutMs } });
    const spool = new Spool(config.spoolDir);
    this.backfill = new Backfill({
      config,
      spool,
      post: (records) => this.postIngest(records),
      isUp: () => !this.open,
      probe: () => this.probe(),
    });
    // Records left by a process that exited during an outage are sent as soon as Costr answers.
    if (config.url && config.token) setTimeout(() => this.backfill.kick(), 0).unref?.();
  }

  /** True while calls go straight to the providers (Costr failed and has not answered since). */
  get circuitOpen(): boolean {
    return this.open;
  }

  get pendingRecords(): number {
    return this.backfill.pending;
  }

  baseUrl(provider: Provider): string {
    return `${this.config.proxyPrefix}${provider}`;
  }

  /** A `fetch` for a client whose base URL points at Costr. */
  readonly fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    const { proxyPrefix } = this.config;
    if (!this.config.url || !url.startsWith(proxyPrefix)) return globalThis.fetch(input, init);
    const rest = url.slice(proxyPrefix.length);
    const provider = /^[a-z]+/.exec(rest)?.[0] as Provider | undefined;
    if (!provider || !PROVIDERS.includes(provider)) return globalThis.fetch(input, init);
    const providerPath = rest.slice(provider.length);
    if (providerPath && !/^[/?]/.test(providerPath)) return globalThis.fetch(input, init);

    const request = await prepare(url, input, init);
    applyContextHeaders(request.headers);
    const fallbackKey = this.config.fallbackKeys[provider];
    if (fallbackKey && this.open) return this.direct(provider, providerPath, request, fallbackKey);

    let response: Awaited<ReturnType<typeof undiciFetch>>;
    try {
      response = await undiciFetch(url, {
        method: request.method,
        headers: [...request.headers],
        body: request.body,
        signal: request.signal ?? undefined,
        redirect: request.redirect,
        dispatcher: this.agent,
      });
    } catch (error) {
      if (fallbackKey && !request.signal?.aborted && isConnectFailure(error)) {
        this.trip();
        return this.direct(provider, providerPath, request, fallbackKey);
      }
      throw error;
    }
    const costrError = response.status >= 500 ? response.headers.get("x-costr-error") : null;
    if (fallbackKey && costrError) {
      // Costr's own trouble, marked so; an upstream failure concerns that call alone.
      if (!costrError.startsWith("upstream")) this.trip();
      response.body?.cancel().catch(() => undefined);
      return this.direct(provider, providerPath, request, fallbackKey);
    }
    return response as unknown as Response;
  };

  private trip(): void {
    if (this.open || this.stopped) return;
    this.open = true;
    this.scheduleProbe();
  }

  private scheduleProbe(): void {
    if (this.probeTimer || this.stopped) return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      void this.probe().then((up) => {
        if (!up) this.scheduleProbe();
      });
    }, this.config.probeIntervalMs);
    this.probeTimer.unref?.();
  }

  /** `GET {url}/healthz`: closes the circuit (and starts the backfill) when Costr answers. */
  probe(): Promise<boolean> {
    if (!this.config.url) return Promise.resolve(false);
    if (this.probing) return this.probing;
    this.probing = (async () => {
      try {
        const response = await undiciFetch(`${this.config.url}/healthz`, {
          dispatcher: this.agent,
          signal: AbortSignal.timeout(this.config.connectTimeoutMs + 5000),
        });
        await response.body?.cancel().catch(() => undefined);
        if (response.status !== 200) return false;
        if (this.open) {
          this.open = false;
          if (this.probeTimer) clearTimeout(this.probeTimer);
          this.probeTimer = null;
        }
        this.backfill.kick();
        return true;
      } catch {
        return false;
      } finally {
        this.probing = null;
      }
    })();
    return this.probing;
  }

  private async postIngest(records: IngestRecord[]): Promise<PostOutcome> {
    try {
      const response = await undiciFetch(`${this.config.url}/api/v1/ingest/`, {
        method: "POST",
        headers: { authorization: `Bearer ${this.config.token}`, "content-type": "application/json" },
        body: JSON.stringify({ events: records }),
        dispatcher: this.agent,
        signal: AbortSignal.timeout(this.config.connectTimeoutMs + 30_000),
      });
      const { status } = response;
      if (status === 200 || status === 207 || status === 400) {
        const answer = (await response.json().catch(() => null)) as { rejected?: unknown[] } | null;
        if (Array.isArray(answer?.rejected)) this.backfill.dropped += answer.rejected.length;
        return "done";
      }
      await response.body?.cancel().catch(() => undefined);
      if (status === 401 || status === 403) return "blocked";
      return "retry";
    } catch (error) {
      if (isConnectFailure(error)) {
        this.trip();
        return "unreachable";
      }
      return "retry";
    }
  }

  /** The same request, straight to the provider with the fallback key; its usage is read in
   * passing and kept for the backfill. */
  private async direct(provider: Provider, providerPath: string, request: PreparedRequest, key: string): Promise<Response> {
    const startedAt = Date.now();
    const started = performance.now();
    const target = new URL(this.config.fallbackBaseUrls[provider] + providerPath);
    const headers = new Headers();
    request.headers.forEach((value, name) => {
      if (!COSTR_HEADER.test(name)) headers.set(name, value);
    });
    const { customer, properties } = attribution(request.headers);
    const authorization = headers.get("authorization");
    if (provider === "openai") {
      headers.set("authorization", `Bearer ${key}`);
    } else {
      if (authorization && COSTR_TOKEN.test(authorization)) headers.delete("authorization");
      headers.set(provider === "anthropic" ? "x-api-key" : "x-goog-api-key", key);
      if (provider === "google" && target.searchParams.has("key")) target.searchParams.set("key", key);
    }

    const path = providerPath.split("?")[0] ?? "";
    let json: unknown = null;
    let body = request.body;
    let stripUsageChunk = false;
    if (provider !== "google" && request.method === "POST") {
      try {
        const text = bodyText(body);
        json = text ? JSON.parse(text) : null;
      } catch {
        json = null;
      }
    }
    const info = inspectRequest(provider, request.method, path, json);
    if (provider === "openai" && info.endpoint === "chat" && info.stream && json && typeof json === "object") {
      // As the proxy does: ask for the usage chunk, and keep it from the caller who did not.
      const options = (json as { stream_options?: unknown }).stream_options;
      const asked = typeof options === "object" && options !== null && (options as { include_usage?: unknown }).include_usage === true;
      if (!asked) {
        const streamOptions = typeof options === "object" && options !== null ? options : {};
        body = JSON.stringify({ ...(json as object), stream_options: { ...streamOptions, include_usage: true } });
        stripUsageChunk = true;
      }
    }

    const response = await globalThis.fetch(target, {
      method: request.method,
      headers,
      body: body as BodyInit | null,
      signal: request.signal ?? undefined,
      redirect: request.redirect,
    });

    const finish = (model: string | null, usage: Usage | null) => {
      const counts = usage ?? emptyUsage();
      const record: IngestRecord = {
        event_id: `sdk_${randomUUID()}`,
        timestamp: new Date(startedAt).toISOString(),
        provider,
        model: (model ?? info.model ?? "unknown").slice(0, MAX_MODEL) || "unknown",
        endpoint: info.endpoint,
        customer,
        properties,
        status: response.status,
        ...counts,
        latency_ms: Math.max(0, Math.round(performance.now() - started)),
      };
      this.backfill.add(record);
    };

    if (!(response.status >= 200 && response.status < 300) || !isMetered(info.endpoint) || !response.body || NULL_BODY_STATUSES.has(response.status)) {
      finish(null, null);
      return response;
    }
    const reader = new UsageReader(provider, info.endpoint, response.headers.get("content-type") ?? "", stripUsageChunk);
    const source = response.body.getReader();
    let finished = false;
    const end = () => {
      if (finished) return null;
      finished = true;
      let tail: Uint8Array | null = null;
      try {
        tail = reader.finish();
      } catch {
        tail = null;
      }
      finish(reader.model, reader.usage);
      return tail;
    };
    const stream = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          let result: ReadableStreamReadResult<Uint8Array>;
          try {
            result = await source.read();
          } catch (error) {
            end();
            controller.error(error);
            return;
          }
          if (result.done) {
            const tail = end();
            if (tail && tail.byteLength) controller.enqueue(tail);
            controller.close();
            return;
          }
          let out = result.value;
          try {
            out = reader.feed(result.value);
          } catch {
            out = result.value;
          }
          if (out.byteLength) controller.enqueue(out);
        },
        cancel(reason) {
          end();
          return source.cancel(reason);
        },
      },
      { highWaterMark: 0 },
    );
    const responseHeaders = new Headers(response.headers);
    if (stripUsageChunk) responseHeaders.delete("content-length");
    return new Response(stream, { status: response.status, statusText: response.statusText, headers: responseHeaders });
  }

  flush(timeoutMs: number): Promise<boolean> {
    return this.backfill.flush(timeoutMs).catch(() => false);
  }

  /** Stops this client's timers (a new `configure()` replaces it). */
  close(): void {
    this.stopped = true;
    if (this.probeTimer) clearTimeout(this.probeTimer);
    this.probeTimer = null;
    this.backfill.stop();
    void this.agent.close().catch(() => undefined);
  }
}
