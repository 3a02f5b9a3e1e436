/**
 * Backfill: the usage records of direct calls, kept in memory and in the spool, sent to
 * `POST {url}/api/v1/ingest/` in batches once Costr answers. Costr stores each event id once,
 * so a batch sent twice (a lost answer, a crash between sending and forgetting) is harmless.
 */
import type { IngestRecord, ResolvedConfig } from "./config.js";
import { scrubRecord } from "./scrub.js";
import type { OrphanFile, Spool } from "./spool.js";

/** What the SDK names itself as the source of its records (DESIGN.md, "Source"). */
export const SOURCE = "sdk_fallback";
export const MAX_BATCH = 500;

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30_000;
const BLOCKED_RETRY_MS = 60_000;

/** How one batch went: stored (or refused for good), to be sent again later, or Costr away. */
export type PostOutcome = "done" | "retry" | "unreachable" | "blocked";

export interface BackfillDeps {
  config: ResolvedConfig;
  spool: Spool;
  post: (records: IngestRecord[]) => Promise<PostOutcome>;
  /** True while calls go through Costr (its circuit is closed). */
  isUp: () => boolean;
  /** Checks Costr now; resolves true when it answers. */
  probe: () => Promise<boolean>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)).unref?.());
}

export class Backfill {
  private queue: IngestRecord[] = [];
  private orphans: OrphanFile[] = [];
  private running: Promise<void> | null = null;
  /** Something may wait to be sent: records added, or another process's files not yet looked at. */
  private dirty = true;
  private retryDelay = RETRY_MIN_MS;
  private retryTimer: NodeJS.Timeout | null = null;
  private readonly secrets: string[];
  /** Records dropped: by `beforeSend`, or refused by the ingest API as invalid. */
  dropped = 0;

  constructor(private readonly deps: BackfillDeps) {
    const { config } = deps;
    this.secrets = [config.token, ...Object.values(config.fallbackKeys)].filter(
      (value): value is string => typeof value === "string",
    );
  }

  /** Keeps a record of a direct call; never throws, never waits. */
  add(record: IngestRecord): void {
    try {
      let kept: IngestRecord | null | undefined = record;
      const { beforeSend } = this.deps.config;
      if (beforeSend) {
        try {
          kept = beforeSend({ ...record, properties: { ...(record.properties ?? {}) } });
        } catch {
          // A failing hook keeps the record as it was: usage is not lost to a bug there.
          kept = record;
        }
      }
      if (!kept) {
        this.dropped += 1;
        return;
      }
      const safe = scrubRecord(kept, this.secrets);
      // Set after scrubbing and beforeSend: the event's source is the SDK's, whatever a hook did.
      safe.source = SOURCE;
      this.queue.push(safe);
      this.dirty = true;
      void this.deps.spool.append(safe);
      this.kick();
    } catch {
      // Nothing here may fail a call.
    }
  }

  /** Records waiting in memory (this process's and those taken over from others). */
  get pending(): number {
    return this.queue.length + this.orphans.reduce((sum, file) => sum + file.records.length, 0);
  }

  /** Starts sending if Costr is up and nothing is sending yet. */
  kick(): void {
    if (this.running || !this.dirty || !this.deps.isUp()) return;
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
    this.running = this.run()
      .catch(() => undefined)
      .finally(() => {
        this.running = null;
      });
  }

  private later(outcome: PostOutcome): void {
    if (outcome === "unreachable") return; // The circuit's probe kicks again when Costr answers.
    const delay = outcome === "blocked" ? BLOCKED_RETRY_MS : this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.kick();
    }, delay);
    this.retryTimer.unref?.();
  }

  private async run(): Promise<void> {
    this.dirty = false;
    this.orphans.push(...(await this.deps.spool.claimOrphans()));
    while (this.orphans.length) {
      const file = this.orphans[0]!;
      while (file.records.length) {
        const batch = file.records.slice(0, MAX_BATCH);
        const outcome = await this.deps.post(batch);
        if (outcome !== "done") {
          this.dirty = true;
          this.later(outcome);
          return;
        }
        file.records.splice(0, batch.length);
      }
      await this.deps.spool.remove(file.path);
      this.orphans.shift();
    }
    while (this.queue.length) {
      const batch = this.queue.slice(0, MAX_BATCH);
      const outcome = await this.deps.post(batch);
      if (outcome !== "done") {
        this.dirty = true;
        await this.deps.spool.rewrite([...this.queue]);
        this.later(outcome);
        return;
      }
      this.queue.splice(0, batch.length);
      this.retryDelay = RETRY_MIN_MS;
    }
    await this.deps.spool.rewrite([...this.queue]);
    // Records added while the last batch was on its way are sent by the next run.
    if (this.queue.length) this.dirty = true;
  }

  /** Waits until every record (this process's and any left by processes that are gone) has
   * reached Costr; false when that did not happen within `timeoutMs`. */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    this.dirty = true;
    for (;;) {
      if (this.deps.isUp()) {
        if (this.retryTimer && this.deps.isUp()) {
          clearTimeout(this.retryTimer);
          this.retryTimer = null;
        }
        this.kick();
        if (this.running) await Promise.race([this.running, sleep(deadline - Date.now())]);
      } else {
        await this.deps.probe();
        if (this.deps.isUp()) continue;
      }
      if (!this.running && !this.dirty && this.pending === 0) {
        await this.deps.spool.settled();
        return true;
      }
      if (Date.now() >= deadline) return false;
      await sleep(Math.min(100, deadline - Date.now()));
    }
  }

  stop(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }
}
