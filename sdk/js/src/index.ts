/**
 * @costr/sdk: the official clients through Costr, straight to the provider when Costr is down,
 * the usage of those direct calls reported to Costr afterwards, exactly once.
 *
 *     import { createOpenAI } from "@costr/sdk";
 *     const openai = await createOpenAI(); // COSTR_URL, COSTR_ORG, COSTR_TOKEN, COSTR_FALLBACK_OPENAI_KEY
 */
import { CostrClient } from "./client.js";
import { resolveConfig, type CostrOptions, type Provider } from "./config.js";

export { withCustomer, currentCustomer } from "./context.js";
export { scrubText, scrubRecord, REDACTED } from "./scrub.js";
export { SOURCE, MAX_BATCH } from "./backfill.js";
export type { CostrOptions, IngestRecord, BeforeSend, Provider } from "./config.js";
export type { CustomerContext } from "./context.js";
export { CostrClient } from "./client.js";

let current: CostrClient | null = null;

/** Sets up Costr for this process; arguments win over the environment. Returns the client. */
export function configure(options: CostrOptions = {}): CostrClient {
  current?.close();
  current = new CostrClient(resolveConfig(options));
  return current;
}

/** The configured client (configured from the environment on first use). */
export function getClient(): CostrClient {
  return current ?? configure();
}

/** A `fetch` for any client's `fetch` option while its base URL points at Costr: calls Costr,
 * and the provider directly when Costr cannot be reached. Other URLs are plain `fetch`. */
export const costrFetch: typeof fetch = ((input: RequestInfo | URL, init?: RequestInit) =>
  getClient().fetch(input, init)) as typeof fetch;

/** Waits until every backfill record has reached Costr; false after `timeoutSeconds`. */
export function flush(timeoutSeconds = 10): Promise<boolean> {
  try {
    return getClient().flush(timeoutSeconds * 1000);
  } catch {
    return Promise.resolve(false);
  }
}

function configured(): CostrClient {
  const client = getClient();
  const { url, org, token } = client.config;
  const missing = [!url && "COSTR_URL (url)", !org && "COSTR_ORG (org)", !token && "COSTR_TOKEN (token)"].filter(Boolean);
  if (missing.length) throw new Error(`Costr is not configured: set ${missing.join(", ")}.`);
  return client;
}

/** `{ baseURL, apiKey, fetch }` for a client of `provider` through Costr: the official SDKs
 * (`openai`: base URL ending in /v1; `@anthropic-ai/sdk`: the provider root). */
export function clientOptions(provider: "openai" | "anthropic"): { baseURL: string; apiKey: string; fetch: typeof fetch } {
  const client = configured();
  const base = client.baseUrl(provider);
  return { baseURL: provider === "openai" ? `${base}/v1` : base, apiKey: client.config.token, fetch: costrFetch };
}

/** `{ baseURL, apiKey, fetch }` for a Vercel AI SDK provider (`@ai-sdk/openai`, `@ai-sdk/anthropic`,
 * `@ai-sdk/google`), whose base URL is the API root with its version. */
export function vercelOptions(provider: Provider, options: { googleApiVersion?: string } = {}): { baseURL: string; apiKey: string; fetch: typeof fetch } {
  const client = configured();
  const base = client.baseUrl(provider);
  const version = provider === "google" ? (options.googleApiVersion ?? "v1beta") : "v1";
  return { baseURL: `${base}/${version}`, apiKey: client.config.token, fetch: costrFetch };
}

/**
 * Loads an optional peer dependency in the caller's module system: `require` in the CJS build,
 * `import()` in the ESM one, so the client class is the same one the caller imports itself
 * (an `instanceof OpenAI.APIError` check then holds).
 */
declare const __COSTR_CJS__: boolean;
async function load<T>(name: string): Promise<T> {
  if (__COSTR_CJS__) return require(name) as T;
  return (await import(name)) as T;
}

type OpenAIClass = typeof import("openai").default;
type AnthropicClass = typeof import("@anthropic-ai/sdk").default;
type GoogleGenAIClass = typeof import("@google/genai").GoogleGenAI;

/** A configured `openai` client; `options` are the client's own and win. */
export async function createOpenAI(options: ConstructorParameters<OpenAIClass>[0] = {}): Promise<InstanceType<OpenAIClass>> {
  const defaults = clientOptions("openai");
  const { default: OpenAI } = await load<typeof import("openai")>("openai");
  return new OpenAI({ ...defaults, ...options });
}

/** A configured `@anthropic-ai/sdk` client; `options` are the client's own and win. */
export async function createAnthropic(options: ConstructorParameters<AnthropicClass>[0] = {}): Promise<InstanceType<AnthropicClass>> {
  const defaults = clientOptions("anthropic");
  const { default: Anthropic } = await load<typeof import("@anthropic-ai/sdk")>("@anthropic-ai/sdk");
  return new Anthropic({ ...defaults, ...options });
}

/** A configured `@google/genai` client; `options` are the client's own and win. */
export async function createGoogleGenAI(options: Partial<ConstructorParameters<GoogleGenAIClass>[0]> = {}): Promise<InstanceType<GoogleGenAIClass>> {
  const client = configured();
  const { GoogleGenAI } = await load<typeof import("@google/genai")>("@google/genai");
  return new GoogleGenAI({
    apiKey: client.config.token,
    ...options,
    httpOptions: { baseUrl: client.baseUrl("google"), fetch: costrFetch, ...(options.httpOptions ?? {}) },
  } as ConstructorParameters<GoogleGenAIClass>[0]);
}

/** `@ai-sdk/openai`'s provider through Costr. */
export async function createVercelOpenAI(options: Parameters<typeof import("@ai-sdk/openai").createOpenAI>[0] = {}) {
  const { createOpenAI: create } = await load<typeof import("@ai-sdk/openai")>("@ai-sdk/openai");
  return create({ ...vercelOptions("openai"), ...options });
}

/** `@ai-sdk/anthropic`'s provider through Costr. */
export async function createVercelAnthropic(options: Parameters<typeof import("@ai-sdk/anthropic").createAnthropic>[0] = {}) {
  const { createAnthropic: create } = await load<typeof import("@ai-sdk/anthropic")>("@ai-sdk/anthropic");
  return create({ ...vercelOptions("anthropic"), ...options });
}

/** `@ai-sdk/google`'s provider through Costr. */
export async function createVercelGoogle(options: Parameters<typeof import("@ai-sdk/google").createGoogleGenerativeAI>[0] = {}) {
  const { createGoogleGenerativeAI: create } = await load<typeof import("@ai-sdk/google")>("@ai-sdk/google");
  return create({ ...vercelOptions("google"), ...options });
}
