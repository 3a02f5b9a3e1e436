// Real processes for the end-to-end tests: the fake provider (tests/fakes/provider.py) and a
// real Costr (its ASGI app under uvicorn, embedded mode: SQLite and the in-process usage writer
// in a temporary directory), set up through manage.py as a self-hoster would.
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const SDK_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const REPO = resolve(SDK_DIR, "..", "..");
export const PYTHON = process.env.COSTR_PYTHON ?? join(REPO, ".venv", "bin", "python");

// The fake's keys, in the providers' formats (Costr checks them when stored): Costr holds
// them, and the SDK's fallback sends them directly. The fake refuses any other credential.
const run = randomBytes(4).toString("hex");
export const FAKE_KEYS = {
  openai: `sk-proj-SdkJs${run}abcdefghijklmnopqrstuv`,
  anthropic: `sk-ant-api03-SdkJs${run}abcdefghijklmnop`,
  google: `AIzaSdkJs${run}${"x".repeat(22)}`,
};

export function freePort() {
  return new Promise((done, fail) => {
    const server = net.createServer();
    server.unref();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

export async function waitFor(check, { timeout = 60_000, message = "timed out" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(typeof message === "function" ? message() : message);
    await sleep(50);
  }
}

async function answers(url) {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await response.arrayBuffer();
    return response.status === 200;
  } catch {
    return false;
  }
}

class Child {
  constructor(args, env) {
    this.output = "";
    this.process = spawn(PYTHON, args, { cwd: REPO, env, stdio: ["ignore", "pipe", "pipe"] });
    this.process.stdout.on("data", (data) => (this.output += data));
    this.process.stderr.on("data", (data) => (this.output += data));
    this.exited = new Promise((done) => this.process.on("exit", (code, signal) => done(code ?? signal)));
  }

  async stop() {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill("SIGTERM");
    return this.exited;
  }
}

export async function startFakeProvider() {
  const port = await freePort();
  const child = new Child([
      "-m", "tests.fakes.provider", "--port", String(port),
      "--openai-key", FAKE_KEYS.openai,
      "--anthropic-key", FAKE_KEYS.anthropic,
      "--google-key", FAKE_KEYS.google,
    ], process.env);
  const url = `http://127.0.0.1:${port}`;
  // Any answer means it serves (an unknown path answers 404 in a provider's shape).
  await waitFor(
    async () => {
      try {
        await (await fetch(`${url}/v1/models`, { signal: AbortSignal.timeout(2000) })).arrayBuffer();
        return true;
      } catch {
        return false;
      }
    },
    { message: () => `the fake provider did not start:\n${child.output}` },
  );
  return { url, stop: () => child.stop() };
}

/** A Costr of its own (database, encryption key, spool) that can be stopped and started again
 * on the same port. */
export class Costr {
  constructor(fakeUrl) {
    this.varDir = mkdtempSync(join(tmpdir(), "costr-sdkjs-"));
    this.env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME ?? this.varDir,
      DJANGO_SETTINGS_MODULE: "costr.settings.local",
      COSTR_VAR_DIR: this.varDir,
      DATABASE_URL: `sqlite:///${join(this.varDir, "costr.sqlite3")}`,
      COSTR_UPSTREAM_OPENAI: fakeUrl,
      COSTR_UPSTREAM_ANTHROPIC: fakeUrl,
      COSTR_UPSTREAM_GOOGLE: fakeUrl,
      LOG_LEVEL: "WARNING",
    };
    this.server = null;
  }

  manage(args, input) {
    const result = spawnSync(PYTHON, ["manage.py", ...args], { cwd: REPO, env: this.env, input, encoding: "utf8", timeout: 120_000 });
    if (result.status !== 0) throw new Error(`manage.py ${args.join(" ")} failed:\n${result.stdout}\n${result.stderr}`);
    return result.stdout;
  }

  /** Migrates, then creates the organization, its provider keys (the fake's) and tokens. */
  async setUp(org) {
    this.port = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.org = org;
    this.manage(["migrate", "--noinput"]);
    this.manage(["createorg", org, "--owner-email", `owner@${org}.test`]);
    for (const [provider, key] of Object.entries(FAKE_KEYS)) {
      this.manage(["addproviderkey", org, provider, "--key-stdin"], key);
    }
    const lastLine = (text) => text.trim().split("\n").at(-1).trim();
    this.token = lastLine(this.manage(["createtoken", org, "--scope", "proxy", "--scope", "ingest", "--name", "sdk"]));
    this.readToken = lastLine(this.manage(["createtoken", org, "--scope", "read", "--name", "reports"]));
  }

  async start() {
    this.server = new Child(
      [
        "-m", "uvicorn", "costr.asgi:application",
        "--host", "127.0.0.1", "--port", String(this.port),
        "--http", "costr.server:HttpToolsProtocol", "--no-access-log",
      ],
      this.env,
    );
    await waitFor(() => answers(`${this.url}/healthz`), {
      message: () => `Costr did not start:\n${this.server.output}`,
    });
  }

  /** SIGTERM, as a deploy or a crash-free restart stops it; the port then refuses connections. */
  async stop() {
    if (this.server) await this.server.stop();
    this.server = null;
  }

  /** Every usage event of the organization, through the reporting API (`read` scope). */
  async events() {
    const events = [];
    let next = `${this.url}/api/v1/events/?start=2000-01-01`;
    while (next) {
      const response = await fetch(next, { headers: { authorization: `Bearer ${this.readToken}` } });
      const page = await response.json();
      if (response.status !== 200) throw new Error(`events API ${response.status}: ${JSON.stringify(page)}`);
      events.push(...page.results);
      next = page.next;
    }
    return events;
  }

  async destroy() {
    await this.stop();
    rmSync(this.varDir, { recursive: true, force: true });
  }
}

/** Tokens and cost of each call as genai-prices prices the usage the fake publishes
 * (test/expected_usage.py), at each event's own timestamp. */
export function expectedUsage(calls) {
  const result = spawnSync(PYTHON, [join(SDK_DIR, "test", "expected_usage.py")], {
    cwd: REPO,
    env: { ...process.env, PYTHONPATH: REPO },
    input: JSON.stringify(calls),
    encoding: "utf8",
    timeout: 120_000,
  });
  if (result.status !== 0) throw new Error(`expected_usage.py failed:\n${result.stderr}`);
  return JSON.parse(result.stdout);
}

/** A listener whose accept queue is full: a connection to it is never made, so a client waits
 * out its connect timeout, as against a host that stopped answering. */
export function startBlackHole() {
  const child = spawn(PYTHON, ["-c", BLACK_HOLE], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((done) => {
    child.stdout.once("data", (data) => done({ port: Number(String(data).trim()), stop: () => child.kill("SIGTERM") }));
  });
}

const BLACK_HOLE = `
import socket, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(0)
port = listener.getsockname()[1]
fillers = []
for _ in range(3):
    filler = socket.socket()
    filler.setblocking(False)
    try:
        filler.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    fillers.append(filler)
print(port, flush=True)
time.sleep(600)
`;

const made = [];
process.on("exit", () => made.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

/** A temporary directory, removed when the test process exits. */
export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}
