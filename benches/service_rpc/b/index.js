import { WorkerEntrypoint } from "cloudflare:workers";

export class Adder extends WorkerEntrypoint {
  add(a, b) {
    return a + b;
  }
}

export default { fetch: () => new Response("rpc-bench-b") };
