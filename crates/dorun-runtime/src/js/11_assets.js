// env.<binding> of the `assets` config: a Fetcher answering from the Worker's static
// assets (op_dorun_assets_fetch). Only the request's method, URL path and headers matter.

import { core } from "ext:core/mod.js";

const { op_dorun_assets_fetch } = core.ops;

const ORIGIN = "http://assets.local";

class AssetsFetcher {
  async fetch(input, init) {
    // A path alone ("/index.html") is looked up as it is.
    if (typeof input === "string" && input.startsWith("/")) input = ORIGIN + input;
    const request = new Request(input, init);
    const reply = await op_dorun_assets_fetch(request.method, request.url, [
      ...request.headers,
    ]);
    return new Response(reply.body ?? null, {
      status: reply.status,
      headers: reply.headers,
    });
  }

  connect() {
    throw new TypeError("connect() is not supported on an assets binding.");
  }
}

/** The binding object, or null when the config has no assets binding. */
export function createAssetsBinding() {
  return new AssetsFetcher();
}
