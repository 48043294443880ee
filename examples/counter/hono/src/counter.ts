import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  async increment(amount = 1) {
    let value = (await this.ctx.storage.get<number>("value")) || 0;
    value += amount;
    await this.ctx.storage.put("value", value);
    return value;
  }

  async decrement(amount = 1) {
    let value = (await this.ctx.storage.get<number>("value")) || 0;
    value -= amount;
    await this.ctx.storage.put("value", value);
    return value;
  }

  async getCounterValue() {
    const value = (await this.ctx.storage.get<number>("value")) || 0;
    return value;
  }
}
