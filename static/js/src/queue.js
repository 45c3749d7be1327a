// ---- queue: the retry queue in localStorage --------------------------------------------------
// Events the collector did not take (network error, 429, 5xx, or a beacon refused) wait here,
// across pages, and are sent again with backoff.

var Q = '_ct_q'; // [{u: endpoint url, e: wire event}]
var QD = '_ct_qd'; // count of events dropped because the queue was full
var DAY = 864e5;

var retryT = 0,
  retryN = 0,
  busy = 0; // a POST from the stored queue is in flight

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
