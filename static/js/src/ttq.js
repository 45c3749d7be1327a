// ---- the ttq facade: commands, instance handles, event handlers, taking over the stub ------
// The only module that runs anything: it replays the stub's queue and listens to the page.

var handles = Object.create(null),
  handlers = {},
  readyFns = [];

var load = (id, o) => {
  if (id == null || !/^[\w-]{1,64}$/.test(id = String(id))) return log('warn', 'bad pixel id', id);
  o = o || {};
  if (o.debug) dbg = 1;
  if (byId[id]) return;
  var p = byId[id] = {
    id,
    o,
    url: (o.collector ? String(o.collector).replace(/\/+$/, '') : BASE) + '/e/' + id,
    out: [],
    wait: [],
    u: NONE
  };
  pixels.push(p);
  if (o.auto_spa) hookSpa();
  log('log', 'load ' + id, o);
};

// ttq.instance(id): page/track/identify for that pixel only.
var handle = id => {
  id = String(id);
  var h = handles[id];
  if (!h) {
    h = handles[id] = {};
    ['page', 'track', 'identify'].forEach(m => {
      h[m] = guard(function () {
        run(m, arguments, id);
        return h;
      });
    });
  }
  return h;
};

var on = (n, f) => typeof f == 'function' && (handlers[n] = handlers[n] || []).push(f);
var off = (n, f) => (handlers[n] = (handlers[n] || []).filter(g => g != f && g.f != f));
var emit = (n, a, b) => (handlers[n] || []).slice().forEach(f => guard(f)(a, b));

// Every command gets (targets, t, ...its arguments): targets is [pixel] for instance calls
// (0 otherwise), t the call time.
var CMD = {
  load: (p, t, id, o) => load(id, o),
  page: (p, t, props, opts) => track(p, t, 'PageView', props, opts),
  track,
  identify: (p, t, o) => {
    if (p) p[0].u = identity(p[0].u, o);
    else user0 = identity(user0, o);
  },
  instance: (p, t, id) => handle(id),
  holdConsent,
  grantConsent,
  revokeConsent,
  enableCookie,
  disableCookie,
  debug: (p, t, flag) => {
    dbg = flag !== false;
  },
  on: (p, t, n, f) => on(n, f),
  off: (p, t, n, f) => off(n, f),
  once: (p, t, n, f) => {
    var g = function () {
      off(n, g);
      return f.apply(this, arguments);
    };
    g.f = f;
    on(n, g);
  },
  ready: (p, t, f) => typeof f == 'function' && (readyFns ? readyFns.push(f) : guard(f)(q))
};

// Run command m with arguments a, for one pixel (pid) or all, at time t.
var run = (m, a, pid, t) => {
  var p = pid != null && [byId[pid]];
  if (p && !p[0]) return log('warn', 'no pixel', pid);
  if (CMD.hasOwnProperty(m)) return CMD[m](p, t || now(), ...a);
};

var exec = c => c && c.length && run(c[0], c.slice(1), c.i, c.t);

// Take over the stub: the same object (references the page kept still work), real methods,
// and a push() that runs commands, for stub instance handles made before we loaded.
var queued = q.slice();
q.length = 0;
METHODS.forEach(m => {
  q[m] = guard(function () {
    return run(m, arguments);
  });
});
q.methods = METHODS;
q.version = '1.0.0';
q.push = guard(function () {
  [].forEach.call(arguments, guard(exec));
});
queued.forEach(guard(exec));
var fns = readyFns;
readyFns = 0;
fns.forEach(f => guard(f)(q));

// Flush with sendBeacon when the page goes away or into the background.
var bye = guard(() => flush(true));
w.addEventListener('pagehide', bye);
d.addEventListener('visibilitychange', () => d.visibilityState == 'hidden' && bye());
w.addEventListener('online', guard(() => {
  retryN = 0;
  drain();
}));
// Retry what earlier pages could not send, once this one has loaded.
var drainSoon = () => setTimeout(guard(drain), 1);
if (d.readyState == 'complete') drainSoon();
else w.addEventListener('load', drainSoon);
