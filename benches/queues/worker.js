// Worker for benches/queues.sh: producer and consumer of the same queues, the same code on
// dorun and on `wrangler dev`. Every measurement uses a fresh run name; what the consumer sees
// is counted in the Tally Durable Object of that name (idFromName(run)).
//
//   GET  /                                 "ok" (readiness)
//   POST /send?q=tput|small&run=R&from=F&n=N&mode=batch|single
//        sends messages F..F+N-1 ({r: R, i}) one after the other: sendBatch() of 100 at a
//        time, or send() of one at a time, each awaited; answers {start, end} (Date.now()
//        before the first send and after the last one resolved)
//   GET  /tally?run=R                      {count, batches, first, last}: messages delivered,
//                                          queue() calls, Date.now() at the first and last
//   POST /latency?run=R&n=N&pause=MS       sends N messages ({r, i, t: Date.now() before
//        send()}) one at a time, MS ms apart; answers [[i, before, after]] with Date.now()
//        before send() and after it resolved
//   GET  /starts?run=R                     [[i, start]]: Date.now() when queue() started for i
import { DurableObject } from "cloudflare:workers";

export class Tally extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.blockConcurrencyWhile(async () => {
      this.state = (await ctx.storage.get("state")) ?? { count: 0, batches: 0, first: 0, last: 0 };
    });
  }

  // Throughput: n messages of one queue() call arrived.
  async add(n) {
    const now = Date.now();
    const s = this.state;
    s.count += n;
    s.batches += 1;
    if (!s.first) s.first = now;
    s.last = now;
    await this.ctx.storage.put("state", s);
    return s.count;
  }

  async tally() {
    return this.state;
  }

  // Latency: [[i, start]] of one queue() call.
  async starts(entries) {
    const values = {};
    for (const [i, start] of entries) values[`s${String(i).padStart(6, "0")}`] = start;
    await this.ctx.storage.put(values);
    this.state.count += entries.length;
    this.state.batches += 1;
    await this.ctx.storage.put("state", this.state);
  }

  async list() {
    const out = [];
    for (const [key, start] of await this.ctx.storage.list({ prefix: "s" })) {
      out.push([Number(key.slice(1)), start]);
    }
    return out;
  }
}

const tally = (env, run) => env.TALLY.get(env.TALLY.idFromName(run));

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const path = url.pathname;
    const arg = (name, fallback) => url.searchParams.get(name) ?? fallback;
    if (path === "/" && request.method === "GET") return new Response("ok");

    if (path === "/send" && request.method === "POST") {
      const queue = arg("q", "tput") === "small" ? env.SMALL : env.TPUT;
      const run = arg("run", "r");
      const from = Number(arg("from", 0));
      const n = Number(arg("n", 100));
      const start = Date.now();
      if (arg("mode", "batch") === "single") {
        for (let i = from; i < from + n; i++) await queue.send({ r: run, i });
      } else {
        for (let i = from; i < from + n; i += 100) {
          const chunk = [];
          for (let j = i; j < Math.min(i + 100, from + n); j++) chunk.push({ body: { r: run, i: j } });
          await queue.sendBatch(chunk);
        }
      }
      return Response.json({ start, end: Date.now() });
    }
    if (path === "/tally" && request.method === "GET") {
      return Response.json(await tally(env, arg("run", "r")).tally());
    }

    if (path === "/latency" && request.method === "POST") {
      const run = arg("run", "r");
      const n = Number(arg("n", 200));
      const pause = Number(arg("pause", 20));
      const sent = [];
      for (let i = 0; i < n; i++) {
        const before = Date.now();
        await env.LAT.send({ r: run, i, t: before });
        sent.push([i, before, Date.now()]);
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
      return Response.json(sent);
    }
    if (path === "/starts" && request.method === "GET") {
      return Response.json(await tally(env, arg("run", "r")).list());
    }
    return new Response("not found", { status: 404 });
  },

  async queue(batch, env) {
    const start = Date.now();
    if (batch.queue === "bench-lat") {
      const byRun = new Map();
      for (const m of batch.messages) {
        if (!byRun.has(m.body.r)) byRun.set(m.body.r, []);
        byRun.get(m.body.r).push([m.body.i, start]);
      }
      await Promise.all([...byRun].map(([run, entries]) => tally(env, run).starts(entries)));
      return;
    }
    const byRun = new Map();
    for (const m of batch.messages) byRun.set(m.body.r, (byRun.get(m.body.r) ?? 0) + 1);
    await Promise.all([...byRun].map(([run, n]) => tally(env, run).add(n)));
  },
};
