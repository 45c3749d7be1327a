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

// Give h every method, run for pixel id (all pixels when id is undefined); they return h, so
// calls chain, except instance() and instances(), which return handles.
var live = (h, id) => {
  METHODS.forEach(m => {
    h[m] = guard(function () {
      var r = run(m, arguments, id);
      return /^inst/.test(m) ? r : h;
    });
  });
  return h;
};

// ttq.instance(id): the commands for that pixel only.
var handle = id => handles[id = String(id)] || (handles[id] = live({}, id));

// Methods of TikTok's base code with no meaning here: said so in debug mode, never thrown.
var nop = m => (p, t, ...a) => log('warn', m + ': not supported', a);

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
  instances: () => pixels.map(p => handle(p.id)),
  alias: nop('alias'),
  group: nop('group'),
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

// c: [method, ...args], from a stub; t and i: its time and pixel when it carries none.
var exec = (c, t, i) => c && c.length && run(c[0], c.slice(1), c.i || i, c.t || t);

// Take over the stub: the same object (references the page kept still work), real methods,
// and a push() that runs commands, for stub instance handles made before we loaded.
// Both stubs (ours and TikTok's base code) leave the pixels in q._o (load options) and q._t
// (load times), and per pixel in q._i the instance handle: TikTok's is an array of the calls
// queued on it. Our stub also queues load() and stamps each call with its time (.t) and pixel
// (.i); TikTok's stamps nothing, so its calls get their pixel's load time (ttq.load(); ttq.page()
// run together). Every pixel TikTok's stub loaded (its load() is not queued) loads first, then
// its instance calls run, then the calls queued on q, in order (with ours, loads among them).
var queued = q.slice(),
  opts = q._o || {},
  times = q._t || {},
  inst = q._i || {},
  mine = queued.map(c => c && c[0] == 'load' && String(c[1])),
  t0;
q.length = 0;
Object.keys(opts).forEach(guard(id => {
  t0 = +times[id] || t0;
  if (mine.indexOf(id) < 0) load(id, opts[id]);
  var h = inst[id];
  if (h && typeof h == 'object') {
    [].slice.call(h).forEach(guard(c => exec(c, +times[id], id)));
    if (h.length) h.length = 0;
    handles[id] = live(h, id);
  }
}));
live(q);
q.methods = METHODS;
q.version = '1.0.0';
q.push = guard(function () {
  [].forEach.call(arguments, guard(c => exec(c)));
});
queued.forEach(guard(c => exec(c, t0)));
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
