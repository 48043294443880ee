// Types of dorun/test (the same for `import` and `require`).

/** A namespace: its key (`<worker>-<Class>`), its binding name or its class name. */
export type NamespaceRef = string;

/**
 * An object: its id (64 hex digits), its name (any other string: the id `idFromName(name)`
 * gives), `{ id }` or `{ name }`.
 */
export type ObjectRef = string | { id: string } | { name: string };

export interface NamespaceInfo {
  key: string;
  worker: string;
  class: string;
  binding: string;
  sqlite: boolean;
  /** Objects with a file. */
  objects: number;
  bytes: number;
}

export interface ObjectInfo {
  id: string;
  /** Known while the object is resident and was reached by name. */
  name: string | null;
  bytes: number;
  lastActivity: number | null;
  resident: boolean;
  inFlight: number;
  sockets: number;
  /** The scheduled alarm (ms since the epoch), or null. */
  alarm: number | null;
  alarmRetries: number | null;
}

export interface KvEntry {
  key: string;
  /**
   * The value as JSON shows it: Maps, Sets, Dates, bytes, BigInts and undefined spelled out
   * as `{$map}`, `{$set}`, `{$date}`, `{$bytes}`, `"12n"`, `{$undefined: true}`.
   */
  value: unknown;
  bytes: number;
}

export interface SqlResult {
  columns: string[];
  rows: unknown[][];
  rowsRead: number;
  rowsWritten: number;
}

export interface AlarmRun {
  /** False when the object had no alarm. */
  ran: boolean;
  /** The alarm time that ran. */
  scheduled?: number;
  /** done; retry (alarm() threw: retried later, as on Cloudflare); stale. */
  outcome?: "done" | "retry" | "stale";
  next?: number | null;
  reason?: string;
}

export interface ResetCounts {
  objects: number;
  resident: number;
  alarms: number;
  sockets: number;
  kvKeys: number;
  d1Rows: number;
  r2Objects: number;
  queueMessages: number;
  /** How long the reset took inside dorun. */
  ms: number;
  heldMs: number;
}

export interface NamespaceResetCounts {
  /** The namespace's key. */
  namespace: string;
  objects: number;
  resident: number;
  alarms: number;
  sockets: number;
  ms: number;
  heldMs: number;
}

/** A client of dorun's admin listener. */
export interface DorunAdmin {
  /** The admin listener's URL. */
  readonly url: string;
  /** Any admin route: `request("GET", "/api/d1")`. Throws a DorunAdminError on 4xx/5xx. */
  request<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  namespaces(): Promise<NamespaceInfo[]>;
  /** The id `env.NS.idFromName(name)` gives. */
  idFromName(ns: NamespaceRef, name: string): Promise<string>;
  /** The namespace's objects: every one with a file, and the resident ones. */
  objects(ns: NamespaceRef): Promise<ObjectInfo[]>;
  object(ns: NamespaceRef, object: ObjectRef): Promise<ObjectInfo>;
  /** The object's storage KV entries, in key order (1000 unless `limit`). */
  kv(
    ns: NamespaceRef,
    object: ObjectRef,
    options?: { prefix?: string; start?: string; limit?: number },
  ): Promise<KvEntry[]>;
  /** One storage KV value (as in {@link KvEntry.value}), or undefined. */
  get(ns: NamespaceRef, object: ObjectRef, key: string): Promise<unknown>;
  /** SQL on the object's database (its KV table `_cf_KV` readable too). */
  sql(ns: NamespaceRef, object: ObjectRef, query: string): Promise<SqlResult>;
  /** Its scheduled alarm (ms since the epoch), or null. */
  alarm(ns: NamespaceRef, object: ObjectRef): Promise<number | null>;
  /** Runs its alarm now; resolves once alarm() has returned. */
  runAlarm(ns: NamespaceRef, object: ObjectRef): Promise<AlarmRun>;
  deleteAlarm(ns: NamespaceRef, object: ObjectRef): Promise<{ deleted: boolean }>;
  /** Drops it from memory (its writes committed); the next request constructs it again. */
  evict(ns: NamespaceRef, object: ObjectRef): Promise<{ evicted: boolean }>;
  /** Every object, alarm, socket, KV key, D1 row, R2 object and queued message gone. */
  reset(): Promise<ResetCounts>;
  /** Only this namespace's objects, their alarms and sockets gone; nothing else touched. */
  reset(ns: NamespaceRef): Promise<NamespaceResetCounts>;
}

export interface StartOptions {
  /** wrangler.toml / wrangler.json(c), a directory, a script, or several configs. Default: found from `cwd`. */
  config?: string | string[];
  /** All state in a temporary directory removed when dorun exits (default, unless dataDir). */
  ephemeral?: boolean;
  /** Keep state in this directory instead. */
  dataDir?: string;
  /** More `dorun serve` arguments (`["--var", "MODE=test"]`). */
  args?: string[];
  /** Environment variables added for dorun. */
  env?: Record<string, string>;
  cwd?: string;
  /** Default 0: a free port. */
  port?: number;
  /** Default 0: a free port. */
  adminPort?: number;
  /** How long to wait for dorun to listen (default 30 s). */
  timeoutMs?: number;
  /** Copy dorun's output to stderr (true) or to a function; always kept for logs(). */
  output?: boolean | ((chunk: string) => void);
  /** The binary (default: DORUN_BINARY, else the installed @dorun/<platform> package). */
  binary?: string;
}

export interface DorunServer {
  /** The app: `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** The admin listener: `http://127.0.0.1:<port>`. */
  readonly adminUrl: string;
  readonly admin: DorunAdmin;
  /** The dorun process (a node:child_process ChildProcess). */
  readonly process: { readonly pid?: number; kill(signal?: string | number): boolean };
  /** fetch() against dorun; a path ("/x") is taken relative to {@link url}. */
  fetch(input: string | URL | Request, init?: RequestInit): Promise<Response>;
  /** Every object, alarm, socket, KV key, D1 row, R2 object and queued message gone. */
  reset(): Promise<ResetCounts>;
  /** Only this namespace's objects, their alarms and sockets gone; nothing else touched. */
  reset(ns: NamespaceRef): Promise<NamespaceResetCounts>;
  /** SIGTERM, then waits: resolves to the exit code, or the signal's name. */
  stop(options?: { timeoutMs?: number }): Promise<number | string>;
  /** What dorun wrote on stdout and stderr so far. */
  logs(): string;
}

export declare class DorunAdminError extends Error {
  readonly status: number;
  readonly body: unknown;
}

/** Starts `dorun serve` on free ports and resolves once it listens. */
export declare function startDorun(options?: StartOptions): Promise<DorunServer>;

/** A client of a running dorun's admin listener (for one dorun shared by a whole run). */
export declare function connectDorun(adminUrl: string, options?: { token?: string }): DorunAdmin;
