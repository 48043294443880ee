// Requests and responses between the isolate thread and JS: a request event's head (and
// body resource) as a `Request`, and a `Response` back as one answer op: buffered, streamed
// chunk by chunk, or handing a WebSocket to the front door.

import { core, primordials } from "ext:core/mod.js";
import { config, console } from "ext:dorun/00_runtime.js";
import { responseSocketToken } from "ext:dorun/03_websockets.js";

const {
  JSONParse,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectPrototypeIsPrototypeOf,
  PromisePrototypeThen,
  StringPrototypeIncludes,
  StringPrototypeReplace,
  TypeError,
} = primordials;

const { op_dorun_respond, op_dorun_respond_stream, op_dorun_respond_failure } = core.ops;

const streams = core.loadExtScript("ext:deno_web/06_streams.js");

/** The stream helpers other glue modules use (R2 bodies are resource-backed streams). */
export const {
  getReadableStreamResourceBacking,
  isReadableStreamDisturbed,
  isReadableStreamLocked,
  readableStreamDisturb,
  readableStreamForRid,
} = streams;

/** How many Worker fetches deep the request with this head came (0 from a client). */
export function fetchDepthOf(head) {
  return head.fetchDepth;
}
const { InnerBody } = core.loadExtScript("ext:deno_fetch/22_body.js");
const { fromInnerRequest, newInnerRequest } = core.loadExtScript(
  "ext:deno_fetch/23_request.js",
);
const { toInnerResponse } = core.loadExtScript("ext:deno_fetch/23_response.js");

const encoder = new TextEncoder();

/** A `Request` from an event's request head (events.rs `RequestHead`). */
export function makeRequest(head) {
  const body = head.bodyRid === null
    ? null
    : new InnerBody(streams.readableStreamForRid(head.bodyRid));
  const inner = newInnerRequest(head.method, head.url, () => head.headers, body, false);
  const request = fromInnerRequest(inner, "immutable");
  if (head.cf !== null) {
    ObjectDefineProperty(request, "cf", { value: ObjectFreeze(JSONParse(head.cf)), enumerable: true });
  }
  return request;
}

/**
 * A request from the front door: with `request.cf` as Cloudflare's edge fills it in (or,
 * through a service binding, the calling request's).
 */
export function makeIncomingRequest(head) {
  const request = makeRequest(head);
  // Through a service binding, the caller's request.cf comes along as it was.
  if (head.cf !== null) return request;
  let acceptEncoding = "";
  for (const [name, value] of head.headers) {
    if (name === "accept-encoding") acceptEncoding = value;
  }
  const cf = ObjectFreeze({ ...config.cf, clientAcceptEncoding: acceptEncoding });
  ObjectDefineProperty(request, "cf", { value: cf, enumerable: true });
  return request;
}

/** Answers event `id` with `response`. */
export function sendResponse(id, response) {
  const inner = toInnerResponse(response);
  const status = inner.status;
  const statusText = inner.statusMessage === "" ? null : inner.statusMessage;
  const headers = inner.headerList;
  const body = inner.body;
  // A WebSocket response hands its socket to the front door.
  const socket = responseSocketToken(response);
  if (body === null) {
    op_dorun_respond(id, status, statusText, headers, null, socket);
    return;
  }
  const source = body.streamOrStatic;
  if (!ObjectPrototypeIsPrototypeOf(streams.ReadableStreamPrototype, source)) {
    const bytes = typeof source.body === "string" ? encoder.encode(source.body) : source.body;
    source.consumed = true;
    op_dorun_respond(id, status, statusText, headers, bytes, null);
    return;
  }
  if (streams.isReadableStreamLocked(source) || streams.isReadableStreamDisturbed(source)) {
    throw new TypeError("The response body has already been used.");
  }
  // A stream backed by a resource of ours (an R2 object's body, a request body) is handed
  // over as it is: the front door reads the resource, and no chunk passes through JS.
  const backing = streams.getReadableStreamResourceBacking(source);
  const rid = backing ? backing.rid : streams.resourceForReadableStream(source);
  if (backing) {
    // The stream is used up: reading or cancelling it later fails as for a consumed body.
    streams.readableStreamDisturb(source);
  }
  PromisePrototypeThen(op_dorun_respond_stream(id, status, statusText, headers, rid), undefined, (error) => {
    console.error("Error while streaming the response body:", error);
  });
}

/** Answers event `id` with the Worker's code having failed (the status is chosen in Rust). */
export function respondFailure(id) {
  op_dorun_respond_failure(id);
}

function escapeHtml(text) {
  return StringPrototypeReplace(String(text), /[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Whether a failed request gets the error page: a browser asking for HTML, while serving
 * locally (`--no-error-page` turns it off).
 */
export function wantsErrorPage(head) {
  if (!config.errorPages) return false;
  for (const [name, value] of head.headers) {
    if (name === "accept" && StringPrototypeIncludes(value, "text/html")) return true;
  }
  return false;
}

/** Answers event `id` with a page showing `error` and its (source-mapped) stack. */
export function respondErrorPage(id, error) {
  const name = error?.name ?? "Error";
  const message = error?.message ?? String(error);
  const stack = typeof error?.stack === "string" ? error.stack : `${name}: ${message}`;
  const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>${escapeHtml(name)}: ${escapeHtml(message)}</title>
<style>body{font:15px/1.5 system-ui,sans-serif;margin:2rem;color:#222}
h1{font-size:1.3rem;color:#b00020}pre{background:#f6f6f6;padding:1rem;overflow:auto}</style>
</head><body>
<h1>${escapeHtml(name)}: ${escapeHtml(message)}</h1>
<p>The Worker threw while handling this request. This page is shown by <code>dorun serve</code>
for local development; start it with <code>--no-error-page</code> to answer a plain 500.</p>
<pre>${escapeHtml(stack)}</pre>
</body></html>
`;
  op_dorun_respond(id, 500, null, [["content-type", "text/html;charset=UTF-8"]], encoder.encode(html), null);
}
