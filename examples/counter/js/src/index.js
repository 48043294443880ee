import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  async increment(amount = 1) {
    const value = ((await this.ctx.storage.get("value")) || 0) + amount;
    await this.ctx.storage.put("value", value);
    return value;
  }

  async decrement(amount = 1) {
    const value = ((await this.ctx.storage.get("value")) || 0) - amount;
    await this.ctx.storage.put("value", value);
    return value;
  }

  async getCounterValue() {
    return (await this.ctx.storage.get("value")) || 0;
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const match = url.pathname.match(/^\/([^/]+)\/(increment|decrement|value)$/);
    if (!match) return new Response("Not found\n", { status: 404 });
    const [, name, action] = match;
    const counter = env.COUNTER.get(env.COUNTER.idFromName(name));
    if (action === "value") {
      if (request.method !== "GET") return new Response("Method not allowed\n", { status: 405 });
      return Response.json({ value: await counter.getCounterValue() });
    }
    if (request.method !== "POST") return new Response("Method not allowed\n", { status: 405 });
    const value = action === "increment" ? await counter.increment() : await counter.decrement();
    return Response.json({ value });
  },
};
