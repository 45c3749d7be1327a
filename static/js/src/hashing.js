// ---- hashing: advanced matching (identify) --------------------------------------------------

var NONE = {v: {}, p: Promise.resolve({})},
  user0 = NONE; // identity from ttq.identify(); instance(id).identify() sets p.u

// wire field: [identify() key, normaliser]
var FIELDS = {
  email: ['email', v => v.toLowerCase()],
  // E.164 without guessing a country: the digits as given (at most 15), "+" in front.
  phone: ['phone_number', v => (v = v.replace(/\D/g, '').slice(0, 15)) && '+' + v],
  external_id: ['external_id', v => v]
};

// Promise of the SHA-256 hex of the normalised value, or of undefined (drop the field).
var sha = (v, norm) => {
  if (v == null || typeof v == 'object') return;
  v = String(v).trim();
  if (/^[0-9a-f]{64}$/i.test(v)) return v.toLowerCase(); // hashed by the caller already
  v = norm(v);
  if (!v) return;
  v = new TextEncoder().encode(v);
  // Web Crypto exists only in secure contexts; a plain-http page hashes here instead, to the same
  // digest, so a raw value never leaves the page either way.
  return subtle ? subtle.digest('SHA-256', v).then(hex, oops) : sha256(v);
};

// SHA-256 (FIPS 180-4) of bytes, as hex. Small rather than fast: a page hashes a few short
// identifiers. Constants: the first 32 bits of the fractional parts of the square roots (initial
// hash) and cube roots (round constants) of the first primes, computed rather than listed.
var K = [],
  H = [];
// (Names: `d` is the document in the SDK's one scope.)
for (var pn = 2, pc = 0, pd; pc < 64; pn++) {
  for (pd = 2; pn % pd; pd++);
  if (pd == pn) {
    if (pc < 8) H[pc] = (pn ** .5 % 1) * 2 ** 32 | 0;
    K[pc++] = (pn ** (1 / 3) % 1) * 2 ** 32 | 0;
  }
}
var ror = (x, n) => x >>> n | x << 32 - n;
var sha256 = bytes => {
  var b = [...bytes, 128],
    bits = bytes.length * 8,
    h = H.slice(),
    w = [],
    i, j, a, e, t;
  while (b.length % 64 != 56) b.push(0);
  b.push(0, 0, 0, 0, bits >>> 24, bits >>> 16 & 255, bits >>> 8 & 255, bits & 255);
  for (i = 0; i < b.length; i += 64) {
    a = h.slice();
    for (j = 0; j < 64; j++) {
      w[j] = j < 16 ? b[i + 4 * j] << 24 | b[i + 4 * j + 1] << 16 | b[i + 4 * j + 2] << 8 | b[i + 4 * j + 3] :
        (ror(t = w[j - 2], 17) ^ ror(t, 19) ^ t >>> 10) + w[j - 7] +
        (ror(t = w[j - 15], 7) ^ ror(t, 18) ^ t >>> 3) + w[j - 16] | 0;
      e = a[4];
      t = a[7] + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + (e & a[5] ^ ~e & a[6]) + K[j] + w[j];
      a.pop();
      a.unshift(t + (ror(e = a[0], 2) ^ ror(e, 13) ^ ror(e, 22)) + (e & a[1] ^ e & a[2] ^ a[1] & a[2]) | 0);
      a[4] = a[4] + t | 0;
    }
    h = h.map((x, k) => x + a[k] | 0);
  }
  return h.map(x => (x >>> 0).toString(16).padStart(8, 0)).join('');
};

// New identity: the previous one with the fields of o (raw, or sha256_*) hashed on top.
var identity = (prev, o) => {
  var r = {v: 0};
  var out = {};
  o = o || {};
  r.p = Promise.all([prev.p].concat(Object.keys(FIELDS).map(k => {
    var f = FIELDS[k];
    var v = o['sha256_' + f[0]];
    return Promise.resolve(sha(v == null ? o[f[0]] : v, f[1])).then(h => {
      if (h) out[k] = h;
    });
  }))).then(a => (r.v = Object.assign({}, a[0], out)));
  return r;
};

var addUser = (e, a, b) => {
  var u = Object.assign({}, a, b);
  if (Object.keys(u).length) e.user = u;
};
