/**
 * The spool: backfill records on disk, one JSON line each, so that a process that exits while
 * Costr is down leaves its records to the next process that runs with the same spool
 * directory.
 *
 * Each process appends to a file of its own, `<pid>-<random>.jsonl`, and removes it once
 * everything in it has reached Costr. Another process takes over a file only when the process
 * that wrote it is gone: it renames the file to `claim-<its pid>-<random>.jsonl` first, so two
 * processes never send the same file at once (and if they did, Costr's idempotency by event id
 * would store each record once).
 */
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { join } from "node:path";

import type { IngestRecord } from "./config.js";

const OWN = /^(\d+)-[0-9a-f]+\.jsonl$/;
const CLAIMED = /^claim-(\d+)-[0-9a-f]+\.jsonl$/;

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface OrphanFile {
  path: string;
  records: IngestRecord[];
}

export class Spool {
  private readonly file: string;
  private chain: Promise<void> = Promise.resolve();
  private readonly dirReady: Promise<boolean>;

  constructor(readonly dir: string) {
    this.file = join(dir, `${process.pid}-${randomBytes(6).toString("hex")}.jsonl`);
    this.dirReady = fs.mkdir(dir, { recursive: true, mode: 0o700 }).then(
      () => true,
      () => false,
    );
  }

  /** Runs file operations one after another; a failed one never stops the next. */
  private enqueue(operation: () => Promise<void>): Promise<void> {
    this.chain = this.chain.then(async () => {
      if (!(await this.dirReady)) return;
      try {
        await operation();
      } catch {
        // A full or read-only disk: the records stay in memory, sent while this process lives.
      }
    });
    return this.chain;
  }

  append(record: IngestRecord): Promise<void> {
    const line = JSON.stringify(record) + "\n";
    return this.enqueue(() => fs.appendFile(this.file, line, { mode: 0o600 }));
  }

  /** Leaves on disk exactly the records still waiting (none: the file is removed). */
  rewrite(records: readonly IngestRecord[]): Promise<void> {
    return this.enqueue(async () => {
      if (!records.length) {
        await fs.rm(this.file, { force: true });
        return;
      }
      const temporary = `${this.file}.tmp`;
      await fs.writeFile(temporary, records.map((record) => JSON.stringify(record) + "\n").join(""), { mode: 0o600 });
      await fs.rename(temporary, this.file);
    });
  }

  /** Files left by processes that are gone, claimed by this one, with their records. */
  async claimOrphans(): Promise<OrphanFile[]> {
    if (!(await this.dirReady)) return [];
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch {
      return [];
    }
    const orphans: OrphanFile[] = [];
    for (const name of names) {
      const owner = OWN.exec(name) ?? CLAIMED.exec(name);
      if (!owner || join(this.dir, name) === this.file || alive(Number(owner[1]))) continue;
      const claimed = join(this.dir, `claim-${process.pid}-${randomBytes(6).toString("hex")}.jsonl`);
      try {
        await fs.rename(join(this.dir, name), claimed);
        const text = await fs.readFile(claimed, "utf8");
        orphans.push({ path: claimed, records: parseLines(text) });
      } catch {
        // Another process claimed it first.
      }
    }
    return orphans;
  }

  async remove(path: string): Promise<void> {
    await fs.rm(path, { force: true }).catch(() => undefined);
  }

  /** Waits for the writes so far. */
  settled(): Promise<void> {
    return this.chain;
  }
}

function parseLines(text: string): IngestRecord[] {
  const records: IngestRecord[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      const record = JSON.parse(line);
      if (record && typeof record === "object" && typeof record.event_id === "string") records.push(record);
    } catch {
      // A line cut by a crash mid-write: the rest of the file still counts.
    }
  }
  return records;
}
