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

  /**
   * workers-sdk's asset binding extra: the file served at `pathname` as
   * `{ readableStream, contentType, cacheStatus }`, or null. html_handling redirects are
   * followed (a few hops), as the lookup is by the file's route, not the exact request.
   */
  async unstable_getByPathname(pathname) {
    let path = String(pathname);
    for (let hop = 0; hop < 4; hop++) {
      const response = await this.fetch(ORIGIN + (path.startsWith("/") ? path : `/${path}`));
      const location = response.headers.get("location");
      if (response.status >= 300 && response.status < 400 && location !== null) {
        path = new URL(location, ORIGIN).pathname;
        continue;
      }
      if (response.status !== 200) return null;
      return {
        readableStream: response.body ?? new Response("").body,
        contentType: response.headers.get("content-type") ?? "application/octet-stream",
        cacheStatus: "HIT",
      };
    }
    return null;
  }

  connect() {
    throw new TypeError("connect() is not supported on an assets binding.");
  }
}

/** The binding object, or null when the config has no assets binding. */
export function createAssetsBinding() {
  return new AssetsFetcher();
}
