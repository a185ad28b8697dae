// Reconnect delays: exponential with full jitter, so a server restart is not met by every
// browser at the same instant. Pure; the random source is passed in for tests.

export const BASE_MS = 500;
export const CAP_MS = 30_000;

export class Backoff {
  constructor({ base = BASE_MS, cap = CAP_MS, random = Math.random } = {}) {
    this.base = base;
    this.cap = cap;
    this.random = random;
    this.attempt = 0;
  }

  // The wait before the next attempt, in ms.
  next() {
    const ceiling = Math.min(this.cap, this.base * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.max(this.base / 2, Math.floor(this.random() * ceiling));
  }

  reset() {
    this.attempt = 0;
  }
}
