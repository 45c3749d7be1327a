/*
 * clicktrail loader stub: inlined into the page by pixel/snippet.py.
 *
 * It makes `window.ttq` an array used as a command queue. Every stubbed method
 * records `[method, ...args]` on it, stamped with the call time (`.t`) and, for
 * `ttq.instance(id).x()`, the pixel id (`.i`), so the SDK can replay the calls in
 * order with their original timestamps once /s/ct.js has loaded. `ttq.load()`
 * also remembers the pixel and its options and injects the SDK (once).
 *
 * Names are kept short on purpose: the build only strips whitespace and comments,
 * and the stub must stay under 700 bytes gzipped.
 */
(function (w, d, n) {
  var q = w[n] = w[n] || [];
  if (q.methods) return; // stub (or the SDK itself) already on the page
  q.methods = 'load page track identify instance instances alias group holdConsent grantConsent revokeConsent enableCookie disableCookie debug on off once ready'.split(' ');
  q._i = {}; // instance handles, by pixel id
  q._o = {}; // load options, by pixel id
  q._t = {}; // load time, by pixel id

  // Give object `o` queueing versions of every method; `id` marks instance calls.
  function stub(o, id) {
    q.methods.forEach(function (m) {
      o[m] = function () {
        var c = [m].concat([].slice.call(arguments));
        c.t = Date.now();
        if (id) c.i = id;
        q.push(c);
        return o;
      };
    });
    return o;
  }
  stub(q);

  q.instance = function (id) {
    return q._i[id] || (q._i[id] = stub({}, id));
  };

  var load = q.load;
  q.load = function (id, o) {
    o = o || {};
    q._o[id] = o;
    q._t[id] = Date.now();
    load(id, o);
    if (!q._s) {
      var s = d.createElement('script');
      s.async = true;
      s.src = String(o.collector || '').replace(/\/+$/, '') + '/s/ct.js';
      (d.head || d.documentElement).appendChild(s);
      q._s = s;
    }
    return q;
  };
})(window, document, 'ttq');
