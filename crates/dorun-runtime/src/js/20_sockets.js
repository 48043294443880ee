// `connect()` of `cloudflare:sockets`: outbound TCP, plain, TLS (`secureTransport: "on"`)
// or upgraded later (`"starttls"` + `socket.startTls()`), as Postgres, MySQL and Redis
// drivers use it. Built on deno_net's connections; a Socket's `readable` and `writable` are
// there at once and reach the connection when it is open.

import { core, primordials } from "ext:core/mod.js";

const {
  Promise,
  PromisePrototypeThen,
  StringPrototypeLastIndexOf,
  StringPrototypeSlice,
  TypeError,
} = primordials;

// The I/O errors of a connection keep their class's name (`ConnectionRefused: ...`) instead of
// turning into an unreadable TypeError.
for (const name of [
  "ConnectionRefused",
  "ConnectionReset",
  "ConnectionAborted",
  "NotConnected",
  "AddrInUse",
  "AddrNotAvailable",
  "BrokenPipe",
  "TimedOut",
  "UnexpectedEof",
  "InvalidData",
  "HostUnreachable",
  "NetworkUnreachable",
]) {
  try {
    core.registerErrorBuilder(name, (message) => {
      const error = new globalThis.Error(message);
      error.name = name;
      return error;
    });
  } catch {
    // Registered already.
  }
}

const net = core.loadExtScript("ext:deno_net/01_net.js");
const tls = core.loadExtScript("ext:deno_net/02_tls.js");
const { ReadableStream, WritableStream } = globalThis;

function addressOf(address) {
  if (typeof address === "string") {
    const colon = StringPrototypeLastIndexOf(address, ":");
    if (colon <= 0) throw new TypeError("connect(): expected \"host:port\" or { hostname, port }");
    let hostname = StringPrototypeSlice(address, 0, colon);
    if (hostname[0] === "[" && hostname[hostname.length - 1] === "]") {
      hostname = StringPrototypeSlice(hostname, 1, -1);
    }
    return { hostname, port: Number(StringPrototypeSlice(address, colon + 1)) };
  }
  if (address === null || typeof address !== "object" || typeof address.hostname !== "string") {
    throw new TypeError("connect(): expected \"host:port\" or { hostname, port }");
  }
  return { hostname: address.hostname, port: Number(address.port) };
}

function checkPort(port) {
  if (!(port >= 1 && port <= 65535) || port !== Math.trunc(port)) {
    throw new TypeError(`connect(): ${port} is not a port number`);
  }
  if (port === 25) {
    throw new TypeError("Connections to port 25 are prohibited (as on Cloudflare)");
  }
}

/** Bytes asked of the connection per read. */
const READ_CHUNK = 64 * 1024;

const text = (addr) => `${addr.hostname}:${addr.port}`;

class Socket {
  #conn;
  #options;
  #hostname;
  #closed;
  #resolveClosed;
  #rejectClosed;
  #upgraded = false;

  constructor(conn, hostname, options) {
    this.#conn = conn;
    this.#hostname = hostname;
    this.#options = options;
    this.#closed = new Promise((resolve, reject) => {
      this.#resolveClosed = resolve;
      this.#rejectClosed = reject;
    });
    // A connection that fails closes the socket with its error (seen or not).
    PromisePrototypeThen(this.#closed, undefined, () => {});
    PromisePrototypeThen(conn, undefined, (error) => this.#rejectClosed(error));
    this.opened = PromisePrototypeThen(conn, (c) => ({
      remoteAddress: text(c.remoteAddr),
      localAddress: text(c.localAddr),
    }));
    PromisePrototypeThen(this.opened, undefined, () => {});
    const socket = this;
    this.readable = new ReadableStream({
      type: "bytes",
      async pull(controller) {
        try {
          const conn = await socket.#conn;
          const buffer = new Uint8Array(READ_CHUNK);
          const read = await conn.read(buffer);
          if (read === null) {
            controller.close();
            if (!socket.#options.allowHalfOpen) socket.close();
          } else {
            controller.enqueue(buffer.subarray(0, read));
          }
        } catch (error) {
          controller.error(error);
        }
      },
      cancel() {
        socket.close();
      },
    });
    this.writable = new WritableStream({
      async write(chunk) {
        const conn = await socket.#conn;
        let bytes = typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk;
        if (!(bytes instanceof Uint8Array)) {
          bytes = new Uint8Array(bytes.buffer ?? bytes, bytes.byteOffset ?? 0, bytes.byteLength);
        }
        let written = 0;
        while (written < bytes.byteLength) {
          written += await conn.write(bytes.subarray(written));
        }
      },
      async close() {
        // The other side sees the end of the stream; reading goes on (half-close).
        await (await socket.#conn).closeWrite();
      },
      abort() {
        socket.close();
      },
    });
  }

  get closed() {
    return this.#closed;
  }

  async close() {
    try {
      const conn = await this.#conn;
      if (!this.#upgraded) conn.close();
    } catch {
      // Never opened, or closed already.
    }
    this.#resolveClosed();
    return this.#closed;
  }

  startTls(options) {
    if (this.#options.secureTransport !== "starttls") {
      throw new TypeError(
        "startTls() needs a socket opened with { secureTransport: \"starttls\" }",
      );
    }
    if (this.#upgraded) throw new TypeError("startTls() was called already");
    this.#upgraded = true;
    const hostname = options?.expectedServerHostname ?? this.#hostname;
    const upgraded = PromisePrototypeThen(this.#conn, (conn) => tls.startTls(conn, { hostname }));
    this.#resolveClosed();
    return new Socket(upgraded, hostname, { ...this.#options, secureTransport: "on" });
  }
}

/** `connect(address, { secureTransport, allowHalfOpen })`. */
export function connect(address, options = {}) {
  const { hostname, port } = addressOf(address);
  checkPort(port);
  const secureTransport = options?.secureTransport ?? "off";
  if (!["off", "on", "starttls"].includes(secureTransport)) {
    throw new TypeError(`connect(): secureTransport must be "off", "on" or "starttls"`);
  }
  const conn = secureTransport === "on"
    ? tls.connectTls({ hostname, port })
    : net.connect({ hostname, port, autoSelectFamily: false });
  // Nobody may look at `opened`: a failure must not be an unhandled rejection then.
  PromisePrototypeThen(conn, undefined, () => {});
  return new Socket(conn, hostname, {
    secureTransport,
    allowHalfOpen: options?.allowHalfOpen === true,
  });
}

export const socketsModule = { connect };
