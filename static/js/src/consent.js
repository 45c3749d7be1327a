// ---- consent ------------------------------------------------------------------------------
// holdConsent / grantConsent / revokeConsent, and enableCookie / disableCookie.

// 0 = no decision asked for, 1 = held, 2 = granted, 3 = revoked.
// Odd means: send nothing, store nothing, write no cookie (checked as `consent & 1`).
var consent = 0,
  cookies = 1; // 0 after disableCookie(): ids stay in memory, no cookie is read or written

var holdConsent = () => {
  consent = 1;
};

var grantConsent = () => {
  consent = 2;
  flush(); // the held events, with their original timestamps
  drain();
};

var revokeConsent = () => {
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
};

var enableCookie = () => {
  cookies = 1;
  persist();
};

var disableCookie = () => {
  cookies = 0;
};
