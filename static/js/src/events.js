// ---- events: page() and track() build the wire events --------------------------------------

var lastUrl = here(), // here() at the last PageView: SPA dedup, and the next one's referrer
  ref = d.referrer;

// Only for debug warnings about parameters of standard events.
var STD = 'AddPaymentInfo AddToCart AddToWishlist ApplicationApproval ClickButton CompletePayment CompleteRegistration Contact CustomizeProduct Download FindLocation InitiateCheckout Lead PageView PlaceAnOrder Purchase Schedule Search StartTrial SubmitApplication SubmitForm Subscribe ViewContent'.split(' ');
var PARAMS = 'contents content_ids content_id content_type content_name content_category price quantity brand value currency query search_string description order_id status customer_type'.split(' ');

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
  // Non-object parameters: Search's query as a plain string (as widgets send it) is kept as
  // {query}; any other is left out of the event, with a warning in debug mode.
  if (props != null && typeof props != 'object') props = name == 'Search' ? {query: String(props)} : log('warn', 'bad params', props);
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
