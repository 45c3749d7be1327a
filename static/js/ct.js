/*
 * clicktrail browser SDK: a ttq-compatible pixel that talks to a clicktrail collector.
 *
 * Wire contract: docs/wire-format.md. Loaded by the stub (static/js/stub.js), whose queued
 * calls it replays in order with their original timestamps. Defines no global but `ttq`;
 * no public call throws into the page.
 *
 * Size matters (budget: 4 KB gzipped) and the build (bench/build_js.py) only strips comments
 * and whitespace, so names that repeat are short. The main ones:
 *   p        a loaded pixel: {id, o: load options, url: events endpoint, out: events ready to
 *            send, wait: events waiting for hashed user fields, u: the pixel's own identity}
 *   e        a wire event, exactly as POSTed (docs/wire-format.md)
 *   identity {v: hashed user fields once known (0 before), p: promise of them}
 */
((w, d) => {
  'use strict';

  var METHODS = 'load page track identify instance holdConsent grantConsent revokeConsent enableCookie disableCookie debug on off once ready'.split(' ');
  var Q = '_ct_q'; // localStorage retry queue: [{u: endpoint url, e: wire event}]
  var QD = '_ct_qd'; // count of events dropped because the queue was full
  var DAY = 864e5;

  var q = w.ttq;
  if (q && q.version) return; // the SDK already runs on this page
  if (!Array.isArray(q)) q = w.ttq = [];

  var loc = location;
  var cr = w.crypto;
  var subtle = cr.subtle; // undefined outside secure contexts

  // Default collector: where this script came from (".../s/ct.js" or ".../s/<version>/ct.js").
  var src = (d.currentScript || {}).src || '';
  var BASE = src.slice(0, Math.max(0, src.lastIndexOf('/s/')));

  var pixels = [],
    byId = Object.create(null),
    handles = Object.create(null),
    // Consent: 0 = no decision asked for, 1 = held, 2 = granted, 3 = revoked.
    // Odd means: send nothing, store nothing, write no cookie.
    consent = 0,
    cookies = 1,
    dbg = 0,
    ids, // {ttp, ttclid, fresh}: made on first use, so an early disableCookie() is honoured
    NONE = {v: {}, p: Promise.resolve({})},
    user0 = NONE, // identity from ttq.identify(); instance(id).identify() sets p.u
    lastUrl, // here() at the last PageView: SPA dedup, and the next one's referrer
    ref = d.referrer,
    flushT = 0,
    retryT = 0,
    retryN = 0,
    spaT = 0,
    hooked = 0, // history methods wrapped (auto_spa)
    busy = 0, // a POST from the stored queue is in flight
    handlers = {},
    readyFns = [];

  // Only for debug warnings about parameters of standard events.
  var STD = 'AddPaymentInfo AddToCart AddToWishlist ApplicationApproval ClickButton CompletePayment CompleteRegistration Contact CustomizeProduct Download FindLocation InitiateCheckout Lead PageView PlaceAnOrder Purchase Schedule Search StartTrial SubmitApplication SubmitForm Subscribe ViewContent'.split(' ');
  var PARAMS = 'contents content_ids content_id content_type content_name content_category price quantity brand value currency query search_string description order_id status customer_type'.split(' ');

  var now = () => Date.now();
  // The URL for PageView purposes: without an in-page anchor (#section), but with a
  // hash route (#/path or #!path), which single-page apps navigate by.
  var here = () => loc.href.replace(/#(?![/!]).*/, '');
  lastUrl = here();
  var log = (kind, ...a) => dbg && console[kind]('[ttq]', ...a);
  var oops = e => log('warn', 'error', e);

  // Wrap f so that nothing it does can throw into the page.
  var guard = f => function () {
    try {
      return f.apply(this, arguments);
    } catch (e) {
      oops(e);
    }
  };

  var rnd = n => cr.getRandomValues(new Uint8Array(n));
  var hex = buf => Array.from(new Uint8Array(buf), b => (b + 256).toString(16).slice(1)).join('');

  // ---- cookies ------------------------------------------------------------------

  var getCookie = k => {
    try {
      var m = cookies && d.cookie.match('(?:^|; )' + k + '=([^;]*)');
      return m ? decodeURIComponent(m[1]) : undefined;
    } catch (e) {} // sandboxed document, or a malformed value
  };

  var setCookie = (k, v, days, dom) => {
    try {
      d.cookie = k + '=' + encodeURIComponent(v) + ';path=/;max-age=' + days * 86400 +
        (dom ? ';domain=' + dom : '') + ';SameSite=Lax' + (loc.protocol == 'https:' ? ';Secure' : '');
    } catch (e) {}
  };

  // The ids always live in memory; cookies only carry them from page to page when allowed.
  var getIds = () => {
    if (!ids) {
      // ttclid: from the landing URL, else from the cookie.
      var c = new URLSearchParams(loc.search).get('ttclid');
      ids = {
        // _ttp: 27 random URL-safe characters (base 32: 135 bits).
        ttp: getCookie('_ttp') || Array.from(rnd(27), b => (b & 31).toString(32)).join(''),
        ttclid: c || getCookie('ttclid'),
        fresh: c // a click id from the URL starts a new 28-day cookie
      };
    }
    return ids;
  };

  // Write (and so refresh) the id cookies. Called whenever events are sent.
  var persist = () => {
    if (!cookies || consent & 1) return;
    var x = getIds();
    setCookie('_ttp', x.ttp, 396, dom()); // 13 months from the last use
    if (x.fresh) {
      setCookie('ttclid', x.ttclid, 28, dom());
      x.fresh = 0;
    }
  };

  // ---- advanced matching ------------------------------------------------------------

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

  // ---- events --------------------------------------------------------------------------

  // One call of page()/track(): one event per target pixel (all loaded pixels by default),
  // sharing one event_id. t: the call time (queued calls keep theirs).
  var track = (targets, t, name, props, opts) => {
    if (typeof name != 'string' || !name) return log('warn', 'bad event', name);
    opts = opts || {};
    var url = loc.href;
    if (name == 'PageView' && here() != lastUrl) {
      ref = lastUrl;
      lastUrl = here();
    }
    if (consent == 3) return log('log', 'revoked', name);
    if (opts.pixel_code) targets = [byId[opts.pixel_code]].filter(Boolean);
    targets = targets || pixels;
    if (!targets.length) return log('warn', 'no pixel', name);
    if (props != null && typeof props != 'object') props = log('warn', 'bad params', props);
    // Copy now: the page may change its object after the call.
    props = props ? JSON.parse(JSON.stringify(props)) : undefined;
    var odd = dbg && props && STD.indexOf(name) >= 0 && Object.keys(props).filter(k => PARAMS.indexOf(k) < 0);
    if (odd && odd.length) log('warn', 'unknown params: ' + name, odd);
    var x = getIds();
    var id = opts.event_id ? String(opts.event_id) : hex(rnd(16));
    targets.forEach(p => {
      // Fields left undefined are dropped by JSON.stringify.
      var e = {
        event: name,
        event_id: id,
        timestamp: t,
        page: {url, referrer: ref},
        ttp: x.ttp,
        ttclid: x.ttclid,
        properties: props,
        test_event_code: p.o.test_event_code || undefined,
        limited_data_use: p.o.limited_data_use
      };
      emit('track', p.id, e);
      var g = user0;
      var u = p.u;
      if (g.v && u.v) {
        addUser(e, g.v, u.v);
        p.out.push(e);
      } else {
        // Hashing still running: the event waits for its identity.
        p.wait.push(e);
        Promise.all([g.p, u.p]).then(a => {
          var i = p.wait.indexOf(e);
          addUser(e, a[0], a[1]);
          // Stored by an unload meanwhile (the page lives on, e.g. it was only hidden):
          // give the stored copy its user fields, if it is still waiting there.
          if (i < 0) return ls(Q, stored().map(x => x.u == p.url && key(x.e) == key(e) ? {u: x.u, e} : x));
          p.wait.splice(i, 1);
          p.out.push(e);
          soon();
        }).catch(oops);
      }
    });
    soon();
  };

  // Everything called in the same tick goes out as one POST per pixel.
  var soon = () => {
    if (!flushT) flushT = setTimeout(guard(flush), 0);
  };

  // unload === true: the page is going away (sendBeacon, and stash what is not ready).
  var flush = unload => {
    clearTimeout(flushT);
    flushT = 0;
    if (consent & 1) return; // held events stay in memory; revoked ones are gone already
    persist();
    pixels.forEach(p => {
      var evs = p.out;
      p.out = [];
      // Events whose hashing is still pending go to the stored queue (without their user
      // fields: a raw value is never stored) rather than being lost.
      if (unload === true && p.wait.length) {
        store(p.url, p.wait);
        p.wait = [];
      }
      for (var i = 0; i < evs.length; i += 100) send(p.url, evs.slice(i, i + 100), unload === true);
    });
  };

  // POST one batch (at most 100 events). queued: the events come from the stored queue.
  var send = (url, evs, beacon, queued) => {
    var body = JSON.stringify({sent_at: now(), events: evs});
    log('log', 'send ' + url, evs);
    if (beacon) {
      var ok;
      try {
        ok = navigator.sendBeacon(url, new Blob([body], {type: 'text/plain;charset=UTF-8'}));
      } catch (e) {}
      if (!ok) store(url, evs);
      return;
    }
    fetch(url, {
      method: 'POST',
      body, // a string body goes as text/plain;charset=UTF-8: no CORS preflight
      // keepalive lets the request outlive the page, but only for small bodies (64 KB in all).
      keepalive: new Blob([body]).size < 6e4,
      credentials: cookies ? 'include' : 'omit', // include: so a first-party collector can set _ttp
      mode: 'cors'
    }).then(
      // 429 and 5xx are worth retrying; any other answer (2xx, or a 4xx refusal) is final.
      r => r.status != 429 && r.status < 500,
      () => 0 // network error (a CORS refusal looks the same)
    ).then(ok => {
      if (queued) {
        busy = 0;
        if (ok) unstore(url, evs);
      } else if (!ok) store(url, evs);
      if (ok) {
        retryN = 0;
        drain();
      } else later();
    }).catch(oops);
  };

  // ---- retry queue (localStorage) -----------------------------------------------------------

  var ls = (k, v) => {
    try {
      var s = localStorage;
      if (v === undefined) return JSON.parse(s.getItem(k));
      if (v === null) s.removeItem(k);
      else s.setItem(k, JSON.stringify(v));
    } catch (e) {} // storage disabled or full: those events are lost
  };

  // The stored events, less those too old to be worth sending (over 7 days).
  var stored = () => {
    var a = ls(Q);
    return Array.isArray(a) ? a.filter(x => x && x.e && x.e.timestamp > now() - 7 * DAY) : [];
  };

  var store = (url, evs) => {
    if (consent & 1) return;
    var all = stored().concat(evs.map(e => ({u: url, e})));
    var over = all.length - 500;
    if (over > 0) {
      all = all.slice(over); // drop the oldest, and count them
      ls(QD, (ls(QD) | 0) + over);
    }
    ls(Q, all);
    later();
  };

  // Dedup key on the collector is (pixel, event, event_id); the url holds the pixel.
  var key = e => e.event + ' ' + e.event_id;

  var unstore = (url, evs) => {
    var sent = evs.map(key);
    ls(Q, stored().filter(x => x.u != url || sent.indexOf(key(x.e)) < 0));
  };

  // Send the oldest stored batch (one endpoint at a time); after a success the next one follows.
  // Events leave the queue only once the collector has answered, so a page closed mid-retry
  // loses nothing (a duplicate is harmless: same event_id).
  var drain = () => {
    if (busy || consent & 1) return;
    var all = stored();
    if (!all.length) return;
    busy = 1;
    var url = all[0].u;
    send(url, all.filter(x => x.u == url).slice(0, 100).map(x => x.e), 0, 1);
  };

  // Exponential backoff: 1 s doubling up to 60 s, with jitter (half to full delay).
  var later = () => {
    if (retryT) return;
    var t = Math.min(6e4, 1e3 * Math.pow(2, retryN++));
    retryT = setTimeout(guard(() => {
      retryT = 0;
      drain();
    }), t / 2 + Math.random() * t / 2);
  };

  // ---- single-page apps ---------------------------------------------------------------------

  // Checked one tick after the history change, so pushState + replaceState (or popstate +
  // replaceState) in one navigation give one PageView, for the final URL; an explicit
  // ttq.page() in that tick counts too. A push to the same URL gives none.
  var spaCheck = () => {
    spaT = spaT || setTimeout(guard(() => {
      spaT = 0;
      if (here() != lastUrl) track(pixels.filter(p => p.o.auto_spa), now(), 'PageView');
    }), 0);
  };

  var hookSpa = () => {
    var h = history;
    if (hooked) return;
    hooked = 1;
    ['pushState', 'replaceState'].forEach(m => {
      var orig = h[m];
      h[m] = function () {
        var r = orig.apply(this, arguments); // the page's own errors still reach the page
        spaCheck();
        return r;
      };
    });
    w.addEventListener('popstate', spaCheck);
  };

  // ---- commands -------------------------------------------------------------------------------

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
  var dom = () => pixels[0] && pixels[0].o.cookie_domain;

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
    holdConsent: () => {
      consent = 1;
    },
    grantConsent: () => {
      consent = 2;
      flush(); // the held events, with their original timestamps
      drain();
    },
    revokeConsent: () => {
      consent = 3;
      pixels.forEach(p => {
        p.out = [];
        p.wait = [];
      });
      ls(Q, null);
      ls(QD, null);
      // Expire the cookies host-only and on this host and each parent domain: that covers
      // cookie_domain and the _ttp a first-party collector sets on the site's domain.
      var h = loc.hostname.split('.');
      ['_ttp', 'ttclid'].forEach(k => {
        setCookie(k, '', 0);
        h.forEach((x, i) => setCookie(k, '', 0, h.slice(i).join('.')));
      });
      ids = 0; // forget the ids as well: a later grant starts afresh
    },
    enableCookie: () => {
      cookies = 1;
      persist();
    },
    disableCookie: () => {
      cookies = 0;
    },
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
})(window, document);
