// Incremental SHA-256 (FIPS 180-4). The browser's crypto.subtle.digest() only hashes a whole
// buffer at once, which would mean holding a multi-gigabyte model file in memory; this one
// takes the file chunk by chunk as it is uploaded.
//
//   const h = new Sha256();
//   h.update(uint8array);  // as many times as needed, any lengths
//   h.hexdigest();         // "e3b0c442..." (finishes the hash; update() is refused after it)
(function (root) {
  "use strict";

  const K = new Int32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);
  const INITIAL = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

  function asBytes(data) {
    if (data instanceof Uint8Array) return data;
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    throw new TypeError("Sha256.update() takes a Uint8Array, another typed array or an ArrayBuffer.");
  }

  class Sha256 {
    constructor() {
      this._h = new Int32Array(INITIAL);
      this._w = new Int32Array(64);
      this._pending = new Uint8Array(64);  // the start of a block that update() has not completed
      this._pendingLength = 0;
      this._length = 0;  // bytes hashed; a Number is exact up to 2^53, far beyond any upload
      this._hex = null;
    }

    update(data) {
      if (this._hex !== null) throw new Error("Sha256: update() after hexdigest(); start a new Sha256.");
      const bytes = asBytes(data);
      const end = bytes.length;
      let pos = 0;
      this._length += end;
      if (this._pendingLength > 0) {
        const take = Math.min(64 - this._pendingLength, end);
        this._pending.set(bytes.subarray(0, take), this._pendingLength);
        this._pendingLength += take;
        pos = take;
        if (this._pendingLength < 64) return this;
        this._blocks(this._pending, 0, 64);
        this._pendingLength = 0;
      }
      pos = this._blocks(bytes, pos, end);
      if (pos < end) {
        this._pending.set(bytes.subarray(pos), 0);
        this._pendingLength = end - pos;
      }
      return this;
    }

    hexdigest() {
      if (this._hex !== null) return this._hex;
      // Padding: 0x80, zeros up to 56 mod 64, then the length in bits as a 64-bit big-endian.
      const length = this._length;
      const tail = new Uint8Array(this._pendingLength < 56 ? 64 : 128);
      tail.set(this._pending.subarray(0, this._pendingLength));
      tail[this._pendingLength] = 0x80;
      const view = new DataView(tail.buffer);
      view.setUint32(tail.length - 8, Math.floor(length / 0x20000000));  // high 32 bits of length * 8
      view.setUint32(tail.length - 4, (length % 0x20000000) * 8);  // low 32 bits
      this._blocks(tail, 0, tail.length);
      let hex = "";
      for (const word of this._h) hex += (word >>> 0).toString(16).padStart(8, "0");
      this._hex = hex;
      return hex;
    }

    // Compress every whole 64-byte block of p[pos:end]; answers where the first partial one starts.
    // One function with the state in locals keeps the loop fast (int32 arithmetic throughout).
    _blocks(p, pos, end) {
      const w = this._w;
      const h = this._h;
      let h0 = h[0], h1 = h[1], h2 = h[2], h3 = h[3], h4 = h[4], h5 = h[5], h6 = h[6], h7 = h[7];
      while (end - pos >= 64) {
        for (let i = 0; i < 16; i++, pos += 4) {
          w[i] = (p[pos] << 24) | (p[pos + 1] << 16) | (p[pos + 2] << 8) | p[pos + 3];
        }
        for (let i = 16; i < 64; i++) {
          const x = w[i - 15];
          const y = w[i - 2];
          const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
          const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
          w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
        }
        let a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, k = h7;
        // Ch and Maj in their shorter equivalent forms: g ^ (e & (f ^ g)), (a & b) | (c & (a | b)).
        for (let i = 0; i < 64; i++) {
          const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
          const t1 = (k + S1 + (g ^ (e & (f ^ g))) + K[i] + w[i]) | 0;
          const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
          const t2 = (S0 + ((a & b) | (c & (a | b)))) | 0;
          k = g; g = f; f = e; e = (d + t1) | 0;
          d = c; c = b; b = a; a = (t1 + t2) | 0;
        }
        h0 = (h0 + a) | 0; h1 = (h1 + b) | 0; h2 = (h2 + c) | 0; h3 = (h3 + d) | 0;
        h4 = (h4 + e) | 0; h5 = (h5 + f) | 0; h6 = (h6 + g) | 0; h7 = (h7 + k) | 0;
      }
      h[0] = h0; h[1] = h1; h[2] = h2; h[3] = h3; h[4] = h4; h[5] = h5; h[6] = h6; h[7] = h7;
      return pos;
    }
  }

  root.Sha256 = Sha256;
})(typeof globalThis !== "undefined" ? globalThis : this);
