// Decoding of the websocket messages' binary fields (docs/protocol.md section 3).
// Pure functions: base64 arrays, and the varint page and frame records of a delta.

export function b64bytes(s) {
  if (!s) return new Uint8Array(0);
  const bin = atob(s);
  const n = bin.length;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function b64int32(s) {
  const b = b64bytes(s);
  return new Int32Array(b.buffer, b.byteOffset, b.length >> 2); // little-endian hosts
}

function reader(bytes) {
  let p = 0;
  return {
    get done() { return p >= bytes.length; },
    u8() { return bytes[p++]; },
    varint() {
      let v = 0, shift = 0, b;
      do { b = bytes[p++]; v += (b & 0x7f) * 2 ** shift; shift += 7; } while (b & 0x80);
      return v;
    },
  };
}

/** Frame records: yields [pfn, kind, mapcount] in increasing pfn. */
export function* frameRecords(b64, n) {
  const r = reader(b64bytes(b64));
  let pfn = -1;
  for (let j = 0; j < n && !r.done; j++) {
    pfn += r.varint() + 1;
    const kind = r.u8();
    const mapcount = r.varint();
    yield [pfn, kind, mapcount];
  }
}

/** Page records without allocating: fn(index, pfn, pte, item, kind) for each. */
export function forEachPage(b64, n, fn) {
  const b = b64bytes(b64);
  let p = 0, idx = -1, pfn = 0;
  for (let j = 0; j < n && p < b.length; j++) {
    let v = 0, shift = 0, x;
    do { x = b[p++]; v += (x & 0x7f) * 2 ** shift; shift += 7; } while (x & 0x80);
    idx += v + 1;
    v = 0; shift = 0;
    do { x = b[p++]; v += (x & 0x7f) * 2 ** shift; shift += 7; } while (x & 0x80);
    pfn += v % 2 ? -(v + 1) / 2 : v / 2;
    const flags = b[p++];
    fn(idx, pfn, flags & 15, flags >> 4, b[p++]);
  }
}
