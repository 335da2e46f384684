// The cell image: one pixel per cell in an ImageData, uploaded to its canvas only where it
// changed (the dirty rectangle). Colours are packed little-endian RGBA words.

export class Layer {
  // One pixel per cell, with a dirty rectangle.
  constructor(w, h) {
    this.w = w; this.h = h;
    this.canvas = document.createElement("canvas");
    this.canvas.width = w; this.canvas.height = h;
    this.ctx = this.canvas.getContext("2d");
    this.img = this.ctx.createImageData(w, h);
    this.px = new Uint32Array(this.img.data.buffer);
    this.clean();
    this.markAll();
  }
  clean() { this.x0 = Infinity; this.y0 = Infinity; this.x1 = -1; this.y1 = -1; }
  markAll() { this.x0 = 0; this.y0 = 0; this.x1 = this.w - 1; this.y1 = this.h - 1; }
  set(idx, rgba) {
    this.px[idx] = rgba;
    const x = idx % this.w, y = (idx / this.w) | 0;
    if (x < this.x0) this.x0 = x;
    if (x > this.x1) this.x1 = x;
    if (y < this.y0) this.y0 = y;
    if (y > this.y1) this.y1 = y;
  }
  flush() {
    if (this.x1 < 0) return false;
    this.ctx.putImageData(this.img, 0, 0, this.x0, this.y0, this.x1 - this.x0 + 1, this.y1 - this.y0 + 1);
    this.clean();
    return true;
  }
}

export function pack(c, a = 255) {
  return ((a << 24) | (c[2] << 16) | (c[1] << 8) | c[0]) >>> 0; // little-endian RGBA
}

export function mix(c, packed) {
  // half way between a flash colour and a packed cell colour
  const r = packed & 255, g = (packed >>> 8) & 255, b = (packed >>> 16) & 255;
  return pack([(c[0] + r) >> 1, (c[1] + g) >> 1, (c[2] + b) >> 1]);
}
