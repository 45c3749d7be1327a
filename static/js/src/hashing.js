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
// A list (a customer's several addresses) gives a list of the distinct hashes, the first 10
// values (the collector's limit per field: more would refuse the whole event).
var sha = (v, norm) => {
  if (Array.isArray(v)) return Promise.all(v.slice(0, 10).map(x => sha(x, norm)))
    .then(a => (a = a.filter((h, i) => h && a.indexOf(h) == i)).length ? a : undefined);
  if (v == null || typeof v == 'object') return;
  v = String(v).trim();
  if (/^[0-9a-f]{64}$/i.test(v)) return v.toLowerCase(); // hashed by the caller already
  v = norm(v);
  if (!v) return;
  // Never send a raw value: without Web Crypto (an insecure context) the value is dropped.
  if (!subtle) return log('warn', 'no crypto.subtle: dropped');
  return subtle.digest('SHA-256', new TextEncoder().encode(v)).then(hex, oops);
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
