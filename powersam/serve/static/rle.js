// COCO run-length encoding in the browser: decode pycocotools' compressed "counts" strings.
"use strict";
const RLE = {
  // "counts" string -> array of run lengths (pycocotools rleFrString).
  countsFromString(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = 1;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p++; k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  },
  // {size: [h, w], counts} -> Uint8Array h*w in row-major order (RLE runs are column-major).
  decode(rle) {
    const [h, w] = rle.size;
    const counts = typeof rle.counts === "string" ? RLE.countsFromString(rle.counts) : rle.counts;
    const out = new Uint8Array(h * w);
    let i = 0;
    for (let r = 0; r < counts.length; r++) {
      const end = i + counts[r];
      if (r % 2 === 1) for (let j = i; j < end; j++) out[(j % h) * w + Math.floor(j / h)] = 1;
      i = end;
    }
    return out;
  },
  area(rle) {
    const counts = typeof rle.counts === "string" ? RLE.countsFromString(rle.counts) : rle.counts;
    let a = 0;
    for (let r = 1; r < counts.length; r += 2) a += counts[r];
    return a;
  },
};
window.RLE = RLE;
