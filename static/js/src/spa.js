// ---- single-page apps: a PageView per history navigation (load option auto_spa) ----------

var spaT = 0,
  hooked = 0; // history methods wrapped

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
