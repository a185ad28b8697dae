// Message ids, the layout of common/ids.py: (unix ms << 12) | (slot << 6) | counter. The
// device's id slot (0..63, from login or WELCOME) makes ids unique across a user's devices (the
// connector refuses an id of another slot); the 6-bit counter gives 64 ids per millisecond
// before borrowing the next one. Ids stay below 2^53 until 2248, but the wire's uint64 is a
// BigInt here all the same, and a decimal string in JSON.

export const SLOT_BITS = 6n;
export const COUNTER_BITS = 6n;
const COUNTER_MASK = (1n << COUNTER_BITS) - 1n;
const SLOT_MASK = (1n << SLOT_BITS) - 1n;
const MS_SHIFT = SLOT_BITS + COUNTER_BITS;

export class MessageIds {
  constructor(slot = 0, clock = () => Date.now()) {
    this.clock = clock;
    this.last = 0n;
    this.setSlot(slot);
  }

  setSlot(slot) {
    if (!Number.isInteger(slot) || slot < 0 || slot > 63) throw new RangeError(`bad id slot ${slot}`);
    this.slot = BigInt(slot);
  }

  // A fresh id, greater than every id this generator made before, even if the clock went back.
  next() {
    const ms = BigInt(Math.floor(this.clock()));
    let id = (ms << MS_SHIFT) | (this.slot << COUNTER_BITS);
    if (id <= this.last) {
      const lastMs = this.last >> MS_SHIFT;
      const counter = this.last & COUNTER_MASK;
      const sameSlot = ((this.last >> COUNTER_BITS) & SLOT_MASK) === this.slot;
      if (sameSlot && counter < COUNTER_MASK) id = this.last + 1n;
      else id = ((lastMs + 1n) << MS_SHIFT) | (this.slot << COUNTER_BITS);
    }
    this.last = id;
    return id;
  }
}

export function slotOf(id) {
  return Number((BigInt(id) >> COUNTER_BITS) & SLOT_MASK);
}
