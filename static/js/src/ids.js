// ---- ids: the _ttp browser id and the ttclid click id, and their cookies ------------------

var ids; // {ttp, ttclid, fresh}: made on first use, so an early disableCookie() is honoured

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

// The cookie_domain of the first pixel loaded, if any.
var dom = () => pixels[0] && pixels[0].o.cookie_domain;
