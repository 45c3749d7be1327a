// ---- transport: batching and POSTing events to the collector ------------------------------

var flushT = 0;

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
