// The gates of a Durable Object, as workerd's io-gate.h describes them.
//
// Input gate. While it is closed: the constructor is running, or a blockConcurrencyWhile()
// or transaction() callback has not settled: no new event is delivered to the object.
// Events that arrive meanwhile wait in arrival order and enter one by one when it opens.
// Closing nests (a callback may close it again). Storage reads are synchronous SQLite calls,
// so awaiting storage never lets another event in; other awaits (fetch, timers, calls to
// other objects) do, as on Cloudflare.
//
// Output gate. A write opens an implicit transaction, committed at the end of the turn.
// A commit is written first (later writes go into the next one), then made durable off the
// isolate thread (storage.rs, dorun-storage flush.rs). Until it is durable, nothing the object sends out: a response or RPC result,
// a fetch(), a call on a stub, a WebSocket message: is released. A write made with
// `allowUnconfirmed` commits the same way but does not hold the gate. A commit that fails
// breaks the gate: whatever waits on it fails, and the owner is told (the object resets).
//
// Only primordials are used here, so the gates can be tested on their own.

import { primordials } from "ext:core/mod.js";

const { ArrayPrototypePush, ArrayPrototypeShift, Promise, PromisePrototypeThen } = primordials;

export class InputGate {
  #closed = 0;
  #waiting = [];

  /** How many closings are in force (nested blockConcurrencyWhile calls). */
  get depth() {
    return this.#closed;
  }

  /** Open, and no event waiting to enter. */
  get idle() {
    return this.#closed === 0 && this.#waiting.length === 0;
  }

  /** null if an event may enter now, else a promise that resolves when it may. */
  wait() {
    if (this.#closed === 0 && this.#waiting.length === 0) return null;
    return new Promise((resolve) => ArrayPrototypePush(this.#waiting, resolve));
  }

  close() {
    this.#closed++;
  }

  /** Undoes one close(); when the gate opens, waiting events enter in order. */
  open() {
    this.#closed--;
    while (this.#closed === 0 && this.#waiting.length > 0) {
      ArrayPrototypeShift(this.#waiting)();
    }
  }
}

export class OutputGate {
  /** The commit of the writes made in the current turn, until it is written. */
  #commit = null;
  /** When that commit will be durable. */
  #commitDurable = null;
  /** The durability of the latest commit, until it settles. */
  #latest = null;
  /** The pending durability that outgoing messages must wait for. */
  #gate = null;
  #onFailure;

  /** `onFailure(error)` is called once for each commit that fails. */
  constructor(onFailure) {
    this.#onFailure = onFailure;
  }

  /** Whether a commit is pending (writes of this turn are already part of it). */
  get committing() {
    return this.#commit !== null;
  }

  /**
   * A commit of this turn's writes has started. `written` settles once its writes are in
   * the database (later writes need a new commit); `durable` (by default the same) once
   * they are durable, which is what outgoing messages wait for.
   */
  track(written, durable = written) {
    this.#commit = written;
    this.#commitDurable = durable;
    this.#latest = durable;
    const settleWritten = () => {
      if (this.#commit === written) this.#commit = null;
    };
    PromisePrototypeThen(written, settleWritten, settleWritten);
    const settle = () => {
      if (this.#gate === durable) this.#gate = null;
      if (this.#latest === durable) this.#latest = null;
    };
    PromisePrototypeThen(durable, settle, (error) => {
      settle();
      this.#onFailure(error);
    });
  }

  /** A confirmed write: outgoing messages wait for the pending commit. */
  hold() {
    if (this.#commit !== null) this.#gate = this.#commitDurable;
  }

  /** Resolves when every confirmed write so far is durable; rejects if a commit failed. */
  async wait() {
    while (this.#gate !== null) await this.#gate;
  }

  /** `wait()` if a confirmed write is not yet durable, else null. */
  pending() {
    return this.#gate === null ? null : this.wait();
  }

  /** Resolves when every write so far, confirmed or not, is durable. */
  async sync() {
    while (this.#latest !== null) await this.#latest;
  }
}
