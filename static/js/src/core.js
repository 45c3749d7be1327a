/*
 * clicktrail browser SDK: a ttq-compatible pixel that talks to a clicktrail collector.
 *
 * Wire contract: docs/wire-format.md. Loaded by the stub (static/js/stub.js), whose queued
 * calls it replays in order with their original timestamps, or by TikTok's base code, which it
 * takes over the same way (see ttq.js). Defines no global but `ttq` (or the name TikTok's base
 * code gives it); no public call throws into the page.
 *
 * The source is these modules (static/js/src/). They are not ES modules but parts of one
 * function body: bench/build_js.py concatenates them, in the order it lists, inside
 * `((w, d) => { 'use strict'; ... })(window, document)` into static/js/ct.js, and minifies
 * that into static/js/ct.min.js. So every module sees the others' names (w is window, d is
 * document), and a module only defines things: the one that runs is the last, ttq.js.
 *
 * Size matters (budget: 5 KB gzipped) and the build only strips comments and whitespace, so
 * names that repeat are short. The main ones:
 *   p        a loaded pixel: {id, o: load options, url: events endpoint, out: events ready to
 *            send, wait: events waiting for hashed user fields, u: the pixel's own identity}
 *   e        a wire event, exactly as POSTed (docs/wire-format.md)
 *   identity {v: hashed user fields once known (0 before), p: promise of them}
 *
 * This module: the takeover check, the page's globals, the loaded pixels, and small helpers.
 */

var METHODS = 'load page track identify instance instances alias group holdConsent grantConsent revokeConsent enableCookie disableCookie debug on off once ready'.split(' ');

// Default collector: where this script came from (".../s/ct.js" or ".../s/<version>/ct.js",
// with TikTok's base code "?sdkid=<pixel>&lib=<global>" after it).
var src = (d.currentScript || {}).src || '';
var BASE = src.slice(0, Math.max(0, src.lastIndexOf('/s/')));

// The global's name: TikTok's base code passes it as ?lib= and in window.TiktokAnalyticsObject
// (read only when a base code loaded us, ?sdkid=: TikTok's own pixel may run on the page too).
var N = (src.match(/[?&]lib=([\w$]+)/) || [])[1] || /[?&]sdkid=/.test(src) && w.TiktokAnalyticsObject || 'ttq';
var q = w[N];
if (q && q.version) return; // the SDK already runs on this page
if (!Array.isArray(q)) q = w[N] = [];

var loc = location;
var cr = w.crypto;
var subtle = cr.subtle; // undefined outside secure contexts

var pixels = [],
  byId = Object.create(null),
  dbg = 0;

var now = () => Date.now();
// The URL for PageView purposes: without an in-page anchor (#section), but with a
// hash route (#/path or #!path), which single-page apps navigate by.
var here = () => loc.href.replace(/#(?![/!]).*/, '');
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
