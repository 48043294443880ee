import { DurableObject } from "cloudflare:workers";

export class Adder extends DurableObject {
  add(a, b) {
    return a + b;
  }
}

/** n sequential round trips of `call`; the median of 5 rounds, in µs per call. */
async function time(n, call) {
  const rounds = [];
  for (let r = 0; r < 5; r++) {
    const started = performance.now();
    for (let i = 0; i < n; i++) await call(i);
    rounds.push(((performance.now() - started) * 1000) / n);
  }
  rounds.sort((x, y) => x - y);
  return rounds[2];
}

export default {
  async fetch(request, env) {
    const n = Number(new URL(request.url).searchParams.get("n") ?? 2000);
    const stub = env.OBJ.get(env.OBJ.idFromName("bench"));
    await stub.add(0, 0);
    await env.B.add(0, 0);
    const object = await time(n, (i) => stub.add(i, 1));
    const service = await time(n, (i) => env.B.add(i, 1));
    return Response.json({ n, objectRpcUs: object, serviceRpcUs: service, ratio: service / object });
  },
};
