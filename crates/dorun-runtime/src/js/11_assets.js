// env.<binding> of the `assets` config: a Fetcher answering from the Worker's static
// assets (op_dorun_assets_fetch). Only the request's method, URL path and headers matter.

import { core } from "ext:core/mod.js";

const { op_dorun_assets_fetch } = core.ops;

const ORIGIN = "http://assets.local";

/** Statuses whose Location a fetch follows. */
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Hops a fetch follows before it fails, as the Fetch standard says. */
const MAX_REDIRECTS = 20;

class AssetsFetcher {
  /**
   * As a fetch: html_handling's redirects (`/page.html` -> 307 `/page`) are followed
   * unless the request says `redirect: "manual"` (or fails with "error"), as through
   * Cloudflare's and wrangler dev's binding; the answer's `url` and `redirected` say where
   * it ended.
   */
  async fetch(input, init) {
    // A path alone ("/index.html") is looked up as it is.
    if (typeof input === "string" && input.startsWith("/")) input = ORIGIN + input;
    const request = new Request(input, init);
    const headers = [...request.headers];
    let { method, url } = request;
    for (let hops = 0; ; hops++) {
      const reply = await op_dorun_assets_fetch(method, url, headers);
      const response = new Response(reply.body ?? null, {
        status: reply.status,
        headers: reply.headers,
      });
      const location = response.headers.get("location");
      if (!REDIRECTS.has(reply.status) || location === null || request.redirect === "manual") {
        return hops === 0 ? response : landed(response, url);
      }
      if (request.redirect === "error") {
        throw new TypeError(`Fetch failed: ${url} redirects and the request's redirect mode is "error".`);
      }
      if (hops === MAX_REDIRECTS) {
        throw new TypeError(`Fetch failed: more than ${MAX_REDIRECTS} redirects from ${request.url}.`);
      }
      if (reply.status === 303 && method !== "HEAD") method = "GET";
      url = new URL(location, url).href;
    }
  }

  /**
   * workers-sdk's asset binding extra: the file served at `pathname` as
   * `{ readableStream, contentType, cacheStatus }`, or null. html_handling redirects are
   * followed, as the lookup is by the file's route, not the exact request.
   */
  async unstable_getByPathname(pathname) {
    const path = String(pathname);
    const response = await this.fetch(ORIGIN + (path.startsWith("/") ? path : `/${path}`));
    if (response.status !== 200) return null;
    return {
      readableStream: response.body ?? new Response("").body,
      contentType: response.headers.get("content-type") ?? "application/octet-stream",
      cacheStatus: "HIT",
    };
  }

  connect() {
    throw new TypeError("connect() is not supported on an assets binding.");
  }
}

/** `response` as reached through redirects: its `url` and `redirected`. */
function landed(response, url) {
  Object.defineProperty(response, "url", { value: url, enumerable: true });
  Object.defineProperty(response, "redirected", { value: true, enumerable: true });
  return response;
}

/** The binding object, or null when the config has no assets binding. */
export function createAssetsBinding() {
  return new AssetsFetcher();
}
