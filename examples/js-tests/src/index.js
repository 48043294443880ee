// The app under test: a counter per name, in a Durable Object. The count is in the object's
// KV storage, each increment is also a row of an SQL table, and an alarm can expire it.
import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec(
      "CREATE TABLE IF NOT EXISTS increments (at INTEGER NOT NULL, by INTEGER NOT NULL)",
    );
  }

  async increment(by) {
    const count = ((await this.ctx.storage.get("count")) ?? 0) + by;
    await this.ctx.storage.put("count", count);
    this.ctx.storage.sql.exec("INSERT INTO increments (at, by) VALUES (?, ?)", Date.now(), by);
    return count;
  }

  async read() {
    return {
      count: (await this.ctx.storage.get("count")) ?? 0,
      expired: (await this.ctx.storage.get("expired")) ?? false,
    };
  }

  async expireIn(ms) {
    await this.ctx.storage.setAlarm(Date.now() + ms);
  }

  async alarm() {
    await this.ctx.storage.put({ count: 0, expired: true });
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const match = url.pathname.match(/^\/counters\/([^/]+)(\/increment|\/expire)?$/);
    if (!match) return new Response("not found", { status: 404 });
    const counter = env.COUNTERS.getByName(match[1]);
    if (request.method === "GET" && !match[2]) return Response.json(await counter.read());
    if (request.method === "POST" && match[2] === "/increment") {
      const by = Number(url.searchParams.get("by") ?? "1");
      return Response.json({ count: await counter.increment(by) });
    }
    if (request.method === "POST" && match[2] === "/expire") {
      await counter.expireIn(Number(url.searchParams.get("in") ?? "0"));
      return new Response(null, { status: 202 });
    }
    return new Response("method not allowed", { status: 405 });
  },
};
