import { DurableObject } from "cloudflare:workers";

export class Visits extends DurableObject {
  async fetch(request) {
    const visits = ((await this.ctx.storage.get("visits")) || 0) + 1;
    await this.ctx.storage.put("visits", visits);
    return Response.json({ visits, client: request.headers.get("CF-Connecting-IP") });
  }
}

export default {
  async fetch(request, env) {
    const name = new URL(request.url).pathname.slice(1) || "default";
    return env.VISITS.get(env.VISITS.idFromName(name)).fetch(request);
  },
};
