// Queues: the producer binding (`env.<binding>.send` / `sendBatch`, stored by
// queue_binding.rs) and the consumer's side of a delivery (`queue(batch, env, ctx)`), whose
// batch the `dorun` crate's queues.rs hands over as an internal request. A message body is
// serialised here as its content type says (`v8`, the default, is V8's structured clone);
// the limits and messages follow Cloudflare's local implementation (Miniflare's broker and
// workerd's queue API).

import { core, primordials } from "ext:core/mod.js";
import { config } from "ext:dorun/00_runtime.js";

const {
  ArrayBufferIsView,
  ArrayPrototypePush,
  DataView,
  Date,
  Error,
  JSONParse,
  JSONStringify,
  MathMax,
  Number,
  NumberIsFinite,
  NumberIsInteger,
  MathTrunc,
  ObjectFreeze,
  StringPrototypeToLowerCase,
  SymbolIterator,
  TypeError,
  TypedArrayPrototypeGetByteLength,
  Uint8Array,
} = primordials;
const { op_dorun_queue_send, op_dorun_queue_metrics } = core.ops;

const { ArrayBuffer, DOMException, TextDecoder, TextEncoder } = globalThis;
const getRandomValues = globalThis.crypto.getRandomValues.bind(globalThis.crypto);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const MAX_MESSAGE_BYTES = 128 * 1000;
const MAX_BATCH_MESSAGES = 100;
const MAX_BATCH_BYTES = (256 + 32) * 1000;
const MAX_DELAY_SECONDS = 24 * 60 * 60;
const CONTENT_TYPES = ["text", "bytes", "json", "v8"];

/** The content type of a message sent without one: `json` from compatibility date
 * 2024-03-18 (`queues_json_messages`), `v8` before. */
const DEFAULT_CONTENT_TYPE = config.queuesJsonMessages ? "json" : "v8";

function contentTypeOf(contentType) {
  if (contentType === undefined) return DEFAULT_CONTENT_TYPE;
  const lower = StringPrototypeToLowerCase(`${contentType}`);
  if (CONTENT_TYPES.includes(lower)) return lower;
  throw new TypeError(`Unsupported queue message content type: ${contentType}`);
}

function bytesOf(view) {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength).slice();
}

/** The body as bytes of its content type. */
function serialise(body, contentType, operation) {
  switch (contentType) {
    case "text":
      if (typeof body !== "string") {
        throw new TypeError(
          `Content Type "text" requires a value of type string, but received: ${typeof body}`,
        );
      }
      return encoder.encode(body);
    case "bytes":
      if (!ArrayBufferIsView(body)) {
        throw new TypeError(
          `Content Type "bytes" requires a value of type ArrayBufferView, but received: ${typeof body}`,
        );
      }
      return bytesOf(body);
    case "json": {
      const text = JSONStringify(body);
      // A function or a symbol has no JSON (wrangler dev fails the send as a 500).
      if (text === undefined) throw new Error(`Queue ${operation} failed: Internal Server Error`);
      return encoder.encode(text);
    }
    default:
      try {
        return core.serialize(body, { forStorage: true });
      } catch (error) {
        // As workerd names a value structured clone cannot take.
        throw new DOMException(error.message, "DataCloneError");
      }
  }
}

/** `{backlogCount, backlogBytes, oldestMessageTimestamp}` with the timestamp as a Date. */
function metricsOf(backlog) {
  const metrics = { backlogCount: backlog.backlogCount, backlogBytes: backlog.backlogBytes };
  if (backlog.oldestMessageTimestamp !== null) {
    metrics.oldestMessageTimestamp = new Date(backlog.oldestMessageTimestamp);
  }
  return metrics;
}

/** `delaySeconds` as workerd takes it: a 32-bit integer (1.5 is 1, "2" is 2, NaN is 0). */
function toInt32(value) {
  const number = Number(value);
  if (!NumberIsFinite(number)) return 0;
  if (number > 2147483647 || number < -2147483648) {
    throw new TypeError(
      "Value out of range. Must be between -2147483648 and 2147483647 (inclusive).",
    );
  }
  return MathTrunc(number);
}

function checkDelay(delaySeconds, operation) {
  if (delaySeconds === undefined) return undefined;
  const delay = toInt32(delaySeconds);
  if (delay < 0 || delay > MAX_DELAY_SECONDS) {
    // What wrangler dev answers (its broker's own message cannot reach the status line).
    throw new Error(`Queue ${operation} failed: Internal Server Error`);
  }
  return delay;
}

function messageId() {
  const bytes = getRandomValues(new Uint8Array(16));
  let id = "";
  for (let i = 0; i < bytes.length; i++) id += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
  return id;
}

class WorkerQueue {
  #queue;
  #deliveryDelay;

  constructor(queue, deliveryDelay) {
    this.#queue = queue;
    this.#deliveryDelay = deliveryDelay ?? 0;
  }

  async send(body, options) {
    if (arguments.length === 0) {
      throw new TypeError(
        "Failed to execute 'send' on 'WorkerQueue': parameter 1 is not of type 'JsValue'.",
      );
    }
    if (body === undefined) throw new TypeError("Message body cannot be undefined");
    const contentType = contentTypeOf(options?.contentType);
    const bytes = serialise(body, contentType, "send");
    const delay = checkDelay(options?.delaySeconds, "send");
    const length = TypedArrayPrototypeGetByteLength(bytes);
    if (length > MAX_MESSAGE_BYTES) {
      throw new Error(
        `Queue send failed: message length of ${length} bytes exceeds limit of ${MAX_MESSAGE_BYTES}`,
      );
    }
    // workerd takes the bytes of a `bytes` body over: the sender's buffer is detached.
    if (contentType === "bytes" && !(body.buffer instanceof SharedArrayBuffer)) {
      body.buffer.transfer();
    }
    const backlog = await op_dorun_queue_send(this.#queue, [{
      id: messageId(),
      body: bytes,
      contentType,
      delaySeconds: delay ?? this.#deliveryDelay,
    }], "send");
    return { metadata: { metrics: metricsOf(backlog) } };
  }

  async metrics() {
    return metricsOf(await op_dorun_queue_metrics(this.#queue));
  }

  async sendBatch(messages, options) {
    const notSequence = () =>
      new TypeError(
        "Failed to execute 'sendBatch' on 'WorkerQueue': parameter 1 is not of type 'Sequence'.",
      );
    if (messages === null || typeof messages !== "object") throw notSequence();
    if (typeof messages[SymbolIterator] !== "function") throw notSequence();
    const list = [...messages];
    if (list.length === 0) throw new TypeError("sendBatch() requires at least one message");
    const out = [];
    let total = 0;
    let largest = 0;
    for (const message of list) {
      if (message === null || typeof message !== "object") {
        throw new TypeError("Incorrect type: the provided value is not of type 'MessageSendRequest'.");
      }
      const body = message.body;
      if (body === undefined) throw new TypeError("Message body cannot be undefined");
      const contentType = contentTypeOf(message.contentType);
      const bytes = serialise(body, contentType, "sendBatch");
      const length = TypedArrayPrototypeGetByteLength(bytes);
      total += length;
      largest = MathMax(largest, length);
      ArrayPrototypePush(out, {
        id: messageId(),
        body: bytes,
        contentType,
        delaySeconds: checkDelay(message.delaySeconds, "sendBatch"),
      });
    }
    const delay = checkDelay(options?.delaySeconds, "sendBatch") ?? this.#deliveryDelay;
    const failed = (why) => new Error(`Queue sendBatch failed: ${why}`);
    if (out.length > MAX_BATCH_MESSAGES) {
      throw failed(`batch message count of ${out.length} exceeds limit of ${MAX_BATCH_MESSAGES}`);
    }
    if (largest > MAX_MESSAGE_BYTES) {
      throw failed(
        `message in batch has length ${largest} bytes which exceeds single message size limit of ${MAX_MESSAGE_BYTES}`,
      );
    }
    if (total > MAX_BATCH_BYTES) {
      // The limit is 288,000 bytes (room for metadata); the message names the documented 256,000.
      throw failed(`batch size of ${total} bytes exceeds limit of 256000`);
    }
    for (const message of out) message.delaySeconds ??= delay;
    const backlog = await op_dorun_queue_send(this.#queue, out, "sendBatch");
    return { metadata: { metrics: metricsOf(backlog) } };
  }
}

function createQueue(queue, deliveryDelay) {
  return new WorkerQueue(queue, deliveryDelay);
}

// --- the consumer -------------------------------------------------------------------------------

/** What the handler decided, message by message (queues.rs reads it back as JSON). */
class QueueResult {
  ackAll = false;
  retryAll = false;
  retryAllDelay = undefined;
  acks = new Set();
  retries = new Map();
}

/** A retry's `delaySeconds`: an integer as workerd converts it, a negative one taken as 0
 * (wrangler dev checks no further). */
function retryDelayOf(options) {
  const delay = options?.delaySeconds;
  if (delay === undefined) return undefined;
  return MathMax(0, toInt32(delay));
}

class Message {
  #result;
  constructor(fields, body, result) {
    // workerd's order of own keys.
    this.attempts = fields.attempts;
    this.body = body;
    this.timestamp = new Date(fields.timestamp);
    this.id = fields.id;
    this.#result = result;
  }

  ack() {
    const result = this.#result;
    if (result.ackAll || result.retryAll || result.retries.has(this.id)) return;
    result.acks.add(this.id);
  }

  retry(options) {
    const result = this.#result;
    const delay = retryDelayOf(options);
    if (result.ackAll || result.retryAll || result.acks.has(this.id)) return;
    result.retries.set(this.id, delay);
  }
}

class MessageBatch {
  #result;
  constructor(queue, messages, metadata, result) {
    this.metadata = metadata;
    this.queue = queue;
    this.messages = ObjectFreeze(messages);
    this.#result = result;
  }

  ackAll() {
    if (this.#result.retryAll) return;
    this.#result.ackAll = true;
  }

  retryAll(options) {
    const delay = retryDelayOf(options);
    if (this.#result.ackAll) return;
    this.#result.retryAll = true;
    this.#result.retryAllDelay = delay;
  }
}

function deserialise(bytes, contentType) {
  switch (contentType) {
    case "text":
      return decoder.decode(bytes);
    case "json":
      return JSONParse(decoder.decode(bytes));
    case "bytes": {
      const copy = new ArrayBuffer(bytes.byteLength);
      new Uint8Array(copy).set(bytes);
      return copy;
    }
    default:
      return core.deserialize(bytes, { forStorage: true });
  }
}

/**
 * The batch a delivery carries: a little-endian u32 length, that many bytes of JSON
 * (`{queue, metadata, messages: [{id, timestamp, attempts, contentType, length}]}`), then
 * the bodies one after another.
 */
function decodeBatch(buffer) {
  const bytes = new Uint8Array(buffer);
  const head = new DataView(buffer).getUint32(0, true);
  const meta = JSONParse(decoder.decode(bytes.subarray(4, 4 + head)));
  const result = new QueueResult();
  const messages = [];
  let at = 4 + head;
  for (const fields of meta.messages) {
    const body = deserialise(bytes.subarray(at, at + fields.length), fields.contentType);
    at += fields.length;
    ArrayPrototypePush(messages, new Message(fields, body, result));
  }
  return { batch: new MessageBatch(meta.queue, messages, meta.metadata, result), result };
}

/** What queues.rs needs to know of a finished (or failed) delivery. */
function outcomeOf(result, error) {
  const retries = [];
  for (const { 0: id, 1: delaySeconds } of result.retries) {
    ArrayPrototypePush(retries, { id, delaySeconds: delaySeconds ?? null });
  }
  return JSONStringify({
    ok: error === undefined,
    error: error === undefined ? null : `${error?.stack ?? error}`,
    ackAll: result.ackAll,
    retryAll: result.retryAll,
    retryAllDelay: result.retryAllDelay ?? null,
    acks: [...result.acks],
    retries,
  });
}

export { createQueue, decodeBatch, outcomeOf };
