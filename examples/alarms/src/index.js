// A batcher on Durable Object alarms: items posted to a queue are collected and flushed
// together when the queue's alarm fires, FLUSH_AFTER_MS after the first item of a batch.
//
//   POST /queue/<name>        body = one item   -> {"pending": N, "flushAt": ms}
//   GET  /queue/<name>        -> {"pending": N, "flushAt": ms | null, "batches": [...]}
//
// The alarm is stored with the items (same implicit transaction), survives eviction and
// restarts, and a flush that throws is retried with backoff.
import { DurableObject } from "cloudflare:workers";

export class Batcher extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec(`
      CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, item TEXT NOT NULL, at INTEGER NOT NULL);
      CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, items TEXT NOT NULL, flushed_at INTEGER NOT NULL, scheduled INTEGER NOT NULL);
    `);
  }

  async add(item) {
    this.ctx.storage.sql.exec("INSERT INTO pending (item, at) VALUES (?, ?)", item, Date.now());
    let flushAt = await this.ctx.storage.getAlarm();
    if (flushAt === null) {
      flushAt = Date.now() + Number(this.env.FLUSH_AFTER_MS ?? 5000);
      await this.ctx.storage.setAlarm(flushAt);
    }
    return { pending: this.pendingCount(), flushAt };
  }

  pendingCount() {
    return this.ctx.storage.sql.exec("SELECT COUNT(*) AS n FROM pending").one().n;
  }

  async status() {
    const batches = this.ctx.storage.sql
      .exec("SELECT id, items, flushed_at, scheduled FROM batches ORDER BY id")
      .toArray()
      .map((b) => ({ id: b.id, items: JSON.parse(b.items), flushedAt: b.flushed_at, scheduledTime: b.scheduled }));
    return { pending: this.pendingCount(), flushAt: await this.ctx.storage.getAlarm(), batches };
  }

  // Runs when the alarm fires. Everything here commits atomically: the batch row, the
  // emptied queue, and the deletion of the alarm that ran.
  async alarm(info) {
    const items = this.ctx.storage.sql.exec("SELECT item FROM pending ORDER BY id").toArray();
    if (items.length === 0) return;
    // A real batcher would send the batch somewhere here (fetch to an API, a queue...).
    this.ctx.storage.sql.exec(
      "INSERT INTO batches (items, flushed_at, scheduled) VALUES (?, ?, ?)",
      JSON.stringify(items.map((row) => row.item)),
      Date.now(),
      info.scheduledTime,
    );
    this.ctx.storage.sql.exec("DELETE FROM pending");
    console.log(`flushed ${items.length} items (retry ${info.retryCount})`);
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const match = url.pathname.match(/^\/queue\/([^/]+)$/);
    if (match === null) return new Response("not found", { status: 404 });
    const batcher = env.BATCHERS.getByName(decodeURIComponent(match[1]));
    if (request.method === "POST") {
      const item = await request.text();
      if (item === "") return new Response("post an item as the body", { status: 400 });
      return Response.json(await batcher.add(item));
    }
    if (request.method === "GET") return Response.json(await batcher.status());
    return new Response("method not allowed", { status: 405 });
  },
};
