/**
 * Settings from `configure({...})` arguments, else the environment (DESIGN.md, "Client SDKs:
 * fail-open when Costr is down"). Arguments win over the environment.
 */
import { createHash } from "node:crypto";
import { homedir } from "node:os";
import { join } from "node:path";

export const PROVIDERS = ["openai", "anthropic", "google"] as const;
export type Provider = (typeof PROVIDERS)[number];

/** Where a direct call goes when no fallback base URL is set: the providers' public origins. */
export const DEFAULT_FALLBACK_BASE_URLS: Record<Provider, string> = {
  openai: "https://api.openai.com",
  anthropic: "https://api.anthropic.com",
  google: "https://generativelanguage.googleapis.com",
};

export const DEFAULT_CONNECT_TIMEOUT_SECONDS = 2;
export const DEFAULT_PROBE_INTERVAL_SECONDS = 5;

/** One usage record of a direct call, as `POST /api/v1/ingest/` takes it. */
export interface IngestRecord {
  event_id: string;
  timestamp: string;
  provider: Provider;
  model: string;
  endpoint: string;
  customer?: string | null;
  properties?: Record<string, string>;
  status: number;
  input_tokens: number | null;
  cached_input_tokens?: number | null;
  cache_write_tokens?: number | null;
  cache_write_1h_tokens?: number | null;
  output_tokens: number | null;
  reasoning_tokens?: number | null;
  latency_ms: number;
  source?: string;
}

export type BeforeSend = (record: IngestRecord) => IngestRecord | null | undefined;

export interface CostrOptions {
  /** Costr's origin, e.g. `https://costr.example.com` (`COSTR_URL`). */
  url?: string;
  /** The organization's slug (`COSTR_ORG`). */
  org?: string;
  /** A Costr token with the `proxy` and `ingest` scopes (`COSTR_TOKEN`). */
  token?: string;
  /** Provider keys for direct calls while Costr is down (`COSTR_FALLBACK_<PROVIDER>_KEY`). */
  fallbackKeys?: Partial<Record<Provider, string>>;
  /** Where direct calls go (`COSTR_FALLBACK_<PROVIDER>_BASE_URL`); the providers' origins. */
  fallbackBaseUrls?: Partial<Record<Provider, string>>;
  /** Seconds to wait for a connection to Costr before falling back (`COSTR_SDK_CONNECT_TIMEOUT`, 2). */
  connectTimeout?: number;
  /** Where backfill records wait (`COSTR_SDK_SPOOL_DIR`); a per-user cache directory by default. */
  spoolDir?: string;
  /** Changes (returns a record) or drops (returns null) a backfill record before it is kept. */
  beforeSend?: BeforeSend;
  /** Seconds between health probes of Costr while calls go direct (5). */
  probeInterval?: number;
}

export interface ResolvedConfig {
  url: string;
  org: string;
  token: string;
  fallbackKeys: Partial<Record<Provider, string>>;
  fallbackBaseUrls: Record<Provider, string>;
  connectTimeoutMs: number;
  probeIntervalMs: number;
  spoolDir: string;
  beforeSend?: BeforeSend;
  /** `{url}/p/{org}/`: the prefix of every proxied URL. */
  proxyPrefix: string;
}

const ENV_NAMES: Record<Provider, string> = {
  openai: "OPENAI",
  anthropic: "ANTHROPIC",
  google: "GOOGLE",
};

function trimSlashes(value: string): string {
  return value.replace(/\/+$/, "");
}

function seconds(value: unknown, fallback: number): number {
  const number = typeof value === "string" ? Number(value.trim()) : value;
  return typeof number === "number" && Number.isFinite(number) && number > 0 ? number : fallback;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value && value.trim() ? value.trim() : undefined;
}

/** The per-user default spool: one directory per Costr origin and organization, so records
 * always go back to the organization whose calls made them. */
function defaultSpoolDir(url: string, org: string): string {
  const base = nonEmpty(process.env.XDG_CACHE_HOME) ?? join(homedir(), ".cache");
  const key = createHash("sha256").update(`${url}\n${org}`).digest("hex").slice(0, 16);
  return join(base, "costr-sdk", key);
}

export function resolveConfig(
  options: CostrOptions = {},
  env: NodeJS.ProcessEnv = process.env,
): ResolvedConfig {
  const url = trimSlashes(nonEmpty(options.url) ?? nonEmpty(env.COSTR_URL) ?? "");
  const org = nonEmpty(options.org) ?? nonEmpty(env.COSTR_ORG) ?? "";
  const token = nonEmpty(options.token) ?? nonEmpty(env.COSTR_TOKEN) ?? "";
  const fallbackKeys: Partial<Record<Provider, string>> = {};
  const fallbackBaseUrls = { ...DEFAULT_FALLBACK_BASE_URLS };
  for (const provider of PROVIDERS) {
    const key =
      nonEmpty(options.fallbackKeys?.[provider]) ??
      nonEmpty(env[`COSTR_FALLBACK_${ENV_NAMES[provider]}_KEY`]);
    if (key) fallbackKeys[provider] = key;
    const base =
      nonEmpty(options.fallbackBaseUrls?.[provider]) ??
      nonEmpty(env[`COSTR_FALLBACK_${ENV_NAMES[provider]}_BASE_URL`]);
    if (base) fallbackBaseUrls[provider] = trimSlashes(base);
  }
  const connectTimeout = seconds(
    options.connectTimeout ?? env.COSTR_SDK_CONNECT_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
  );
  const probeInterval = seconds(options.probeInterval, DEFAULT_PROBE_INTERVAL_SECONDS);
  const spoolDir =
    nonEmpty(options.spoolDir) ?? nonEmpty(env.COSTR_SDK_SPOOL_DIR) ?? defaultSpoolDir(url, org);
  return {
    url,
    org,
    token,
    fallbackKeys,
    fallbackBaseUrls,
    connectTimeoutMs: Math.round(connectTimeout * 1000),
    probeIntervalMs: Math.round(probeInterval * 1000),
    spoolDir,
    beforeSend: options.beforeSend,
    proxyPrefix: `${url}/p/${org}/`,
  };
}
