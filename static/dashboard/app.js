/* clicktrail advertiser dashboard. Plain ES2017, no build step, no dependencies.
 *
 * Reads the API with a `reports` token (kept in sessionStorage, sent as a Bearer token).
 * Everything that comes from the API is put in the page with textContent or setAttribute on
 * elements built here, never parsed as HTML.
 */
'use strict';

(function () {
  const TOKEN_KEY = 'clicktrail.dashboard.token';
  /** The tables' metric columns, in order; `money` ones are in the advertiser's currency. */
  const COLUMNS = [
    {key: 'spend', label: 'Spend', kind: 'money'},
    {key: 'impressions', label: 'Impressions', kind: 'integer'},
    {key: 'clicks', label: 'Clicks', kind: 'integer'},
    {key: 'ctr', label: 'CTR', kind: 'percent'},
    {key: 'cpc', label: 'CPC', kind: 'money'},
    {key: 'cpm', label: 'CPM', kind: 'money'},
    {key: 'conversions', label: 'Conversions', kind: 'count'},
    {key: 'conversion_value', label: 'Value', kind: 'money'},
    {key: 'cvr', label: 'CVR', kind: 'percent'},
    {key: 'cpa', label: 'CPA', kind: 'money'},
    {key: 'roas', label: 'ROAS', kind: 'ratio'},
  ];
  const METRICS = COLUMNS.map((c) => c.key);
  const SUMMED = ['spend', 'impressions', 'clicks', 'conversions', 'conversion_value'];
  /** Added by servers that convert currencies; asked for while the server knows it. */
  const UNCONVERTED = 'unconverted_conversions';
  const PAGE_SIZE = 1000;
  const MAX_PAGES = 50;
  const SVG = 'http://www.w3.org/2000/svg';
  const DASH = '\u2014';
  const FIRST_DAY = '1970-01-01'; // the API's first day
  /** The country table's metric columns: only conversions have a country (their event's client IP). */
  const COUNTRY_COLUMNS = [
    {key: 'conversions', label: 'Conversions', kind: 'count'},
    {key: 'conversion_value', label: 'Value', kind: 'money'},
    {key: 'share', label: 'Share of conversions', kind: 'percent'},
  ];
  /** Alert rules and scheduled reports are read again this often while the page is in view. */
  const LIVE_EVERY_MS = 60000;

  const state = {
    token: null,
    advertiser: null,
    seq: 0,
    convSeq: 0,
    explainSeq: 0,
    collapsed: new Set(),
    table: [], // {tr, level, ids, cells} of the breakdown in table order, totals last
    tree: [], // campaigns -> ad groups -> ads of the breakdown, with their metrics
    totals: null,
    previous: null, // {start, end, totals} of the period before, or null
    days: [], // {day, metrics} of every day of the range, in date order
    sort: defaultSort(),
    countrySeq: 0,
    countries: [], // {country, name, metrics} of the country table
    countryTotals: null,
    // the live sections: each one's timer, when its last read began, its read counter, what it shows
    live: {timer: {}, at: {}, seq: {rules: 0, schedules: 0}, shown: {rules: null, schedules: null}},
    currency: '',
    unconvertedMetric: true, // false once the server refused the metric
  };

  function defaultSort() {
    return {breakdown: {key: 'spend', dir: 'descending'}, daily: {key: 'day', dir: 'ascending'},
      'by-country': {key: 'conversions', dir: 'descending'}};
  }

  // ---- DOM helpers ---------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach((key) => {
        const value = props[key];
        if (value === undefined || value === null || value === false) return;
        if (key === 'text') node.textContent = String(value);
        else if (key === 'class') node.className = value;
        else if (key === 'on') Object.keys(value).forEach((ev) => node.addEventListener(ev, value[ev]));
        else if (key === 'data') Object.keys(value).forEach((k) => { node.dataset[k] = value[k]; });
        else node.setAttribute(key, value === true ? '' : String(value));
      });
    }
    (children || []).forEach((child) => {
      if (child === null || child === undefined || child === false) return;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach((key) => node.setAttribute(key, String(attrs[key])));
    (children || []).forEach((child) => child && node.append(child));
    return node;
  }

  function svgText(x, y, text, cls) {
    const t = svg('text', {x: x, y: y, class: cls || ''});
    t.textContent = text;
    return t;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // ---- errors --------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, field, message) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  function describe(err) {
    if (err instanceof ApiError) {
      const facts = [err.status ? 'HTTP ' + err.status : null, err.code, err.field ? 'field ' + err.field : null]
        .filter(Boolean).join(', ');
      return err.message + (facts ? ' (' + facts + ')' : '');
    }
    return String((err && err.message) || err);
  }

  function showError(err, context) {
    const box = $('error');
    clear(box);
    box.append(el('strong', {text: (context || 'Error') + ': '}), document.createTextNode(describe(err)));
    box.hidden = false;
  }

  function clearError() {
    clear($('error')).hidden = true;
  }

  /** A 401 anywhere: the token is gone or wrong; back to the sign-in form with the message. */
  function handle(err, context) {
    if (err instanceof ApiError && err.status === 401) {
      signOut();
      showError(err, 'Signed out: the API refused the token');
      return;
    }
    showError(err, context);
  }

  // ---- API -----------------------------------------------------------------------------------------

  async function api(path, params) {
    const url = new URL(path, window.location.origin);
    Object.keys(params || {}).forEach((key) => {
      const value = params[key];
      if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, String(value));
    });
    let resp;
    try {
      resp = await fetch(url.toString(), {
        headers: {Authorization: 'Bearer ' + state.token, Accept: 'application/json'},
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (e) {
      throw new ApiError(0, 'network_error', null, 'the API could not be reached (' + e.message + ')');
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    if (!resp.ok) {
      const detail = (body && typeof body === 'object' && body.error) || {};
      throw new ApiError(resp.status, detail.code || 'http_error', detail.field || null,
        detail.message || ('the API answered ' + resp.status + ' ' + resp.statusText + ' to ' + url.pathname));
    }
    if (body === null || typeof body !== 'object') {
      throw new ApiError(resp.status, 'bad_response', null, 'the API answered something that is not JSON');
    }
    return body;
  }

  /** Every row of a report (follows pages), with the first page's totals and resolved query. */
  async function report(params) {
    const first = await api('/v1/reports', Object.assign({}, params, {page_size: PAGE_SIZE, page: 1}));
    const rows = (first.rows || []).slice();
    const total = (first.page && first.page.total_rows) || rows.length;
    for (let page = 2; rows.length < total && page <= MAX_PAGES; page++) {
      const next = await api('/v1/reports', Object.assign({}, params, {page_size: PAGE_SIZE, page: page}));
      if (!next.rows || !next.rows.length) break;
      rows.push.apply(rows, next.rows);
    }
    return {rows: rows, totals: first.totals || null, query: first.query || {}, body: first};
  }

  // ---- formatting ----------------------------------------------------------------------------------

  const isNum = (x) => typeof x === 'number' && isFinite(x);
  const count = (x) => (isNum(x) ? String(Math.round(x * 100) / 100) : null);
  const integer = (x) => (isNum(x) ? String(Math.round(x)) : null);
  const percent = (x) => (isNum(x) ? (x * 100).toFixed(2) + '%' : null);
  const ratio = (x) => (isNum(x) ? x.toFixed(2) : null);
  const divide = (a, b) => (isNum(a) && isNum(b) && b !== 0 ? a / b : null);

  /** Digits after the point of an ISO 4217 currency (JPY 0, EUR 2, KWD 3), from the browser's
   *  own currency data; 2 for a code it does not know. */
  function minorUnit(currency) {
    if (!/^[A-Z]{3}$/.test(currency || '')) return 2;
    try {
      return new Intl.NumberFormat('en', {style: 'currency', currency: currency}).resolvedOptions()
        .maximumFractionDigits;
    } catch (e) {
      return 2;
    }
  }

  /** An amount rounded to the minor unit of `currency` (the advertiser's when not given). */
  function money(x, currency) {
    return isNum(x) ? x.toFixed(minorUnit(currency === undefined ? state.currency : currency)) : null;
  }

  /** An amount in `currency` with its code; without one, the number as it is (at most 2 decimals)
   *  and no label: it may be in any currency. */
  function amount(x, currency) {
    const known = typeof currency === 'string' && /^[A-Z]{3}$/.test(currency);
    return known ? money(x, currency) + ' ' + currency : count(x);
  }

  const FORMATS = {money: (x) => money(x), integer: integer, percent: percent, count: count, ratio: ratio};

  /** The cells shown for a row of metrics, in column order; null where there is no number. */
  function metricCells(m) {
    return COLUMNS.map((c) => FORMATS[c.kind](m[c.key]));
  }

  /** The ratios of summed metrics, as the API computes them. */
  function withRatios(m) {
    return Object.assign({}, m, {
      ctr: divide(m.clicks, m.impressions),
      cpc: divide(m.spend, m.clicks),
      cpm: divide(isNum(m.spend) ? m.spend * 1000 : null, m.impressions),
      cvr: divide(m.conversions, m.clicks),
      cpa: divide(m.spend, m.conversions),
      roas: divide(m.conversion_value, m.spend),
    });
  }

  function addInto(sum, row) {
    SUMMED.forEach((k) => {
      if (isNum(row[k])) sum[k] += row[k];
    });
    return sum;
  }

  const zero = () => ({spend: 0, impressions: 0, clicks: 0, conversions: 0, conversion_value: 0});

  /** Change from `before` to `now` as "+12.5%" / "-3.0%"; null without a non-zero base. */
  function change(now, before) {
    if (!isNum(now) || !isNum(before) || before === 0) return null;
    const pct = ((now - before) / Math.abs(before)) * 100;
    const text = Math.abs(pct).toFixed(1);
    if (text === '0.0') return '0.0%';
    return (pct > 0 ? '+' : '-') + text + '%';
  }

  function pad2(n) {
    return (n < 10 ? '0' : '') + n;
  }

  /** YYYY-MM-DD of `date` in the IANA time zone `tz`. */
  function dayIn(tz, date) {
    const parts = {};
    new Intl.DateTimeFormat('en-US', {timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit'})
      .formatToParts(date).forEach((p) => { parts[p.type] = p.value; });
    return parts.year + '-' + parts.month + '-' + parts.day;
  }

  function addDays(day, n) {
    const d = new Date(day + 'T00:00:00Z');
    d.setUTCDate(d.getUTCDate() + n);
    return d.getUTCFullYear() + '-' + pad2(d.getUTCMonth() + 1) + '-' + pad2(d.getUTCDate());
  }

  /** Days from `start` to `end`, both included. */
  function daysBetween(start, end) {
    return Math.round((Date.parse(end + 'T00:00:00Z') - Date.parse(start + 'T00:00:00Z')) / 86400000) + 1;
  }

  /** [start, end] of a preset, in days of the time zone `tz`; null for "custom". */
  function presetRange(preset, tz, now) {
    const today = dayIn(tz, now || new Date());
    switch (preset) {
      case 'today': return [today, today];
      case 'yesterday': return [addDays(today, -1), addDays(today, -1)];
      case 'last_7': return [addDays(today, -6), today];
      case 'last_14': return [addDays(today, -13), today];
      case 'last_30': return [addDays(today, -29), today];
      case 'this_month': return [today.slice(0, 8) + '01', today];
      default: return null;
    }
  }

  /** The period of the same length just before [start, end]; null before the API's first day. */
  function previousRange(start, end) {
    const n = daysBetween(start, end);
    const range = [addDays(start, -n), addDays(start, -1)];
    return range[0] >= FIRST_DAY ? range : null;
  }

  function validZone(tz) {
    try {
      new Intl.DateTimeFormat('en-US', {timeZone: tz});
      return true;
    } catch (e) {
      return false;
    }
  }

  /** "YYYY-MM-DD HH:MM:SS Zone" of an ISO time, in the IANA time zone `tz` (UTC if not valid). */
  function timeIn(iso, tz) {
    const date = new Date(iso);
    if (isNaN(date.getTime())) return String(iso);
    const zone = validZone(tz) ? tz : 'UTC';
    const p = {};
    new Intl.DateTimeFormat('en-US', {timeZone: zone, year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23'})
      .formatToParts(date).forEach((part) => { p[part.type] = part.value; });
    return p.year + '-' + p.month + '-' + p.day + ' ' + p.hour + ':' + p.minute + ':' + p.second + ' ' + zone;
  }

  // ---- sign in / out -------------------------------------------------------------------------------

  async function signIn(token) {
    state.token = token;
    const button = $('sign-in-button');
    button.disabled = true;
    try {
      const advertiser = await api('/v1/advertiser');
      sessionStorage.setItem(TOKEN_KEY, token);
      state.advertiser = advertiser;
      clearError();
      showApp(advertiser);
    } catch (err) {
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      showError(err, err instanceof ApiError && err.status === 401 ? 'Sign-in refused' : 'Sign-in failed');
    } finally {
      button.disabled = false;
    }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.advertiser = null;
    state.seq++;
    state.convSeq++;
    state.explainSeq++;
    state.countrySeq++;
    stopLive();
    state.countries = [];
    state.countryTotals = null;
    state.collapsed.clear();
    state.table = [];
    state.tree = [];
    state.days = [];
    state.totals = null;
    state.previous = null;
    state.unconvertedMetric = true;
    $('app').hidden = true;
    $('sign-in').hidden = false;
    $('sign-out').hidden = true;
    $('who').hidden = true;
    $('token').value = '';
    ['chart', 'conversions', 'pixels', 'f-event'].forEach((id) => clear($(id)));
    clearLive('rules');
    $('f-bots').checked = false; // every filter back to its default, as on a first sign-in
    setHashState({bots: false});
    showBots(false);
    $('countries-status').textContent = '';
    ['breakdown', 'daily', 'by-country'].forEach((id) => {
      const table = $(id);
      [table.tHead, table.tBodies[0], table.tFoot].forEach((part) => part && clear(part));
      table.dataset.state = 'empty';
    });
    showUnconverted(null);
    clearLive('schedules');
    clear($('explanation'));
    $('download-csv').disabled = true;
    clearError();
  }

  function showApp(advertiser) {
    const settings = advertiser.settings || {};
    $('sign-in').hidden = true;
    $('app').hidden = false;
    $('sign-out').hidden = false;
    const who = $('who');
    who.textContent = 'Advertiser ' + advertiser.advertiser_id;
    who.hidden = false;

    const tz = typeof settings.timezone === 'string' && validZone(settings.timezone) ? settings.timezone : 'UTC';
    $('f-timezone').value = tz;
    $('f-preset').value = 'last_7';
    applyPreset();
    $('f-model').value = settings.model || 'last_click';
    $('f-click-window').value = String(isNum(settings.click_window_days) ? settings.click_window_days : 7);
    $('f-view-window').value = String(isNum(settings.view_window_days) ? settings.view_window_days : 1);
    $('f-date-basis').value = 'touch';
    state.sort = defaultSort();
    $('f-bots').checked = hashState().bots; // kept in the URL: a reload or a shared link keeps it
    showBots($('f-bots').checked);
    setCurrency(typeof settings.currency === 'string' ? settings.currency : '');
    fillEvents([]);
    refreshLive(advertiser);
    loadPixels(advertiser).catch((err) => {
      showError(err, 'Could not show the pixels');
      return [];
    }).then((events) => {
      if (state.advertiser !== advertiser) return; // signed out meanwhile
      fillEvents(events);
      reloadAll();
    });
  }

  function fillEvents(seen) {
    const select = $('f-event');
    const previous = select.value;
    const names = Array.from(new Set(seen)).sort();
    if (!names.length) names.push('CompletePayment');
    clear(select);
    names.forEach((name) => select.append(el('option', {value: name, text: name})));
    const preferred = [previous, 'CompletePayment', 'PlaceAnOrder', 'SubmitForm']
      .find((name) => name && names.indexOf(name) >= 0);
    select.value = preferred || names.find((n) => n !== 'PageView') || names[0];
  }

  /** The advertiser's currency, as the API names it: every amount is labelled with it, or with
   *  nothing while it is not known (never a guess). */
  function setCurrency(currency) {
    state.currency = /^[A-Z]{3}$/.test(currency) ? currency : '';
    renderHead('breakdown', {key: 'name', label: 'Campaign / ad group / ad'});
    renderHead('daily', {key: 'day', label: 'Day'});
    renderHead('by-country', {key: 'country', label: 'Country'}, COUNTRY_COLUMNS);
    renderChart();
  }

  // ---- the query the selectors describe ------------------------------------------------------------

  /** Sets From and To to the chosen preset's days in the report's time zone (nothing for custom). */
  function applyPreset() {
    const tz = $('f-timezone').value.trim();
    const range = presetRange($('f-preset').value, validZone(tz) ? tz : 'UTC');
    if (!range) return false;
    $('f-start').value = range[0];
    $('f-end').value = range[1];
    return true;
  }

  function query() {
    return {
      start: $('f-start').value,
      end: $('f-end').value,
      timezone: $('f-timezone').value.trim(),
      events: $('f-event').value,
      model: $('f-model').value,
      click_window: $('f-click-window').value,
      view_window: $('f-view-window').value,
      date_basis: $('f-date-basis').value,
      include_bots: $('f-bots').checked ? 'true' : undefined, // left out: the API's default, bots excluded
    };
  }

  function reloadAll() {
    loadNumbers();
    loadCountries();
    loadConversions();
  }

  // ---- bot traffic: a filter kept in the URL (#bots=include), so a reload or a shared link keeps it -----

  function hashState() {
    const params = new URLSearchParams(window.location.hash.replace(/^#/, ''));
    return {bots: params.get('bots') === 'include'};
  }

  function setHashState(wanted) {
    const params = new URLSearchParams(window.location.hash.replace(/^#/, ''));
    if (wanted.bots) params.set('bots', 'include');
    else params.delete('bots');
    const hash = params.toString();
    // replaceState: the filter is not a page of its own for Back, and no hashchange fires.
    history.replaceState(history.state, '', window.location.pathname + window.location.search + (hash ? '#' + hash : ''));
  }

  /** Says in the page, not only in the checkbox, that the numbers count bots. */
  function showBots(included) {
    const note = $('bots-note');
    note.hidden = !included;
    note.textContent = included ? 'Bot traffic is included: the numbers, the chart and the countries below ' +
      'count the clicks and conversions of crawlers, headless browsers and scripts too.' : '';
  }

  function botsChanged() {
    const included = $('f-bots').checked;
    setHashState({bots: included});
    showBots(included);
    reloadAll();
  }

  // ---- numbers: loading ----------------------------------------------------------------------------

  const isDay = (text) => /^\d{4}-\d{2}-\d{2}$/.test(text);

  async function loadNumbers() {
    const seq = ++state.seq;
    const q = query();
    const tables = [$('breakdown'), $('daily')];
    tables.forEach((table) => {
      table.dataset.state = 'loading';
      table.setAttribute('aria-busy', 'true');
    });
    $('download-csv').disabled = true;
    $('status').textContent = 'Loading\u2026';
    const before = isDay(q.start) && isDay(q.end) && q.start <= q.end ? previousRange(q.start, q.end) : null;
    try {
      const results = await Promise.all([
        report(Object.assign({}, q, {dimensions: 'campaign_id,adgroup_id,ad_id', metrics: METRICS.join(',')})),
        dailyReport(q),
        before ? api('/v1/reports', Object.assign({}, q, {start: before[0], end: before[1], metrics: METRICS.join(','),
          page_size: 1})) : null,
      ]);
      if (seq !== state.seq) return; // a newer selection is on its way
      const breakdown = results[0];
      if (breakdown.query.currency !== undefined) setCurrency(String(breakdown.query.currency || ''));
      state.tree = buildTree(breakdown.rows);
      state.totals = breakdown.totals || withRatios(breakdown.rows.reduce(addInto, zero()));
      state.previous = before && results[2] ? {start: before[0], end: before[1], totals: results[2].totals || null}
        : null;
      state.days = buildDays(results[1].rows, q.start, q.end);
      renderBreakdown();
      renderDaily();
      renderChart();
      showUnconverted(unconvertedOf(results[1].body) !== null ? unconvertedOf(results[1].body)
        : unconvertedOf(breakdown.body));
      clearError();
      tables.forEach((table) => {
        table.dataset.state = 'ready';
        table.dataset.model = q.model;
        table.dataset.range = q.start + '_' + q.end;
        table.dataset.bots = q.include_bots ? 'included' : 'excluded';
        table.removeAttribute('aria-busy');
      });
      $('download-csv').disabled = false;
      const resolved = breakdown.query;
      $('status').textContent = 'Showing ' + q.start + ' to ' + q.end + ' (' + (resolved.timezone || q.timezone) +
        '), ' + q.events + ', ' + (resolved.model || q.model).replace(/_/g, ' ') + ', ' +
        (resolved.click_window !== undefined ? resolved.click_window : q.click_window) + '-day click / ' +
        (resolved.view_window !== undefined ? resolved.view_window : q.view_window) + '-day view window' +
        (state.previous ? '; compared with ' + state.previous.start + ' to ' + state.previous.end : '') +
        (q.include_bots ? '; bot traffic included' : '; bot traffic excluded') + '.';
    } catch (err) {
      if (seq !== state.seq) return;
      tables.forEach((table) => {
        table.dataset.state = 'error';
        table.removeAttribute('aria-busy');
      });
      $('status').textContent = 'Could not load the numbers.';
      handle(err, 'Could not load the report');
    }
  }

  /** The report by day; with the count of conversions left out of the value for want of an
   *  exchange rate, while the server knows that metric (an older one refuses it: asked without). */
  async function dailyReport(q) {
    const params = Object.assign({}, q, {dimensions: 'stat_time_day'});
    if (state.unconvertedMetric) {
      try {
        return await report(Object.assign({}, params, {metrics: METRICS.concat([UNCONVERTED]).join(',')}));
      } catch (err) {
        const refused = err instanceof ApiError && err.status === 400 && err.field === 'metrics' &&
          err.message.indexOf(UNCONVERTED) >= 0;
        if (!refused) throw err;
        state.unconvertedMetric = false;
      }
    }
    return report(Object.assign({}, params, {metrics: METRICS.join(',')}));
  }

  /** The number of unconverted conversions a report answer states (in its totals or beside them), or null. */
  function unconvertedOf(body) {
    if (!body) return null;
    const found = [body.totals && body.totals[UNCONVERTED], body[UNCONVERTED]].find(isNum);
    return found === undefined ? null : found;
  }

  function unconvertedText(n) {
    return (n === 1 ? '1 conversion in a currency without an exchange rate is not in Value'
      : count(n) + ' conversions in currencies without an exchange rate are not in Value') +
      ' (they count as conversions; post the rates to POST /v1/exchange-rates).';
  }

  function showUnconverted(n) {
    const box = $('unconverted');
    box.hidden = !(isNum(n) && n > 0);
    box.textContent = box.hidden ? '' : unconvertedText(n);
  }

  // ---- sorting -------------------------------------------------------------------------------------

  /** Compares rows by `key` in `dir`; rows without a number last either way, ties by name. */
  function comparator(key, dir, nameOf, valueOf) {
    const sign = dir === 'ascending' ? 1 : -1;
    const byName = (a, b) => (nameOf(a) < nameOf(b) ? -1 : nameOf(a) > nameOf(b) ? 1 : 0);
    const none = (v) => v === null || v === undefined || (typeof v === 'number' && !isFinite(v));
    return (a, b) => {
      const x = valueOf(a, key);
      const y = valueOf(b, key);
      if (none(x) || none(y)) return none(x) === none(y) ? byName(a, b) : none(x) ? 1 : -1;
      if (x < y) return -sign;
      if (x > y) return sign;
      return byName(a, b);
    };
  }

  function headLabel(column) {
    return column.label + (column.kind === 'money' && state.currency ? ' (' + state.currency + ')' : '');
  }

  /** The header row of a sortable table: each heading a button (keyboard and screen reader),
   *  the sorted one with aria-sort. Built once; later calls only relabel it. */
  function renderHead(id, first, metrics) {
    const table = $(id);
    const columns = [{key: first.key, label: first.label, name: true}].concat(metrics || COLUMNS);
    if (!table.tHead.rows.length) {
      const tr = el('tr');
      columns.forEach((c) => {
        tr.append(el('th', {scope: 'col', class: c.name ? 'name' : null, data: {key: c.key}}, [
          el('button', {type: 'button', class: 'sort', on: {click: () => sortBy(id, c.key)}}, [
            el('span', {class: 'label'}), el('span', {class: 'arrow', 'aria-hidden': 'true'})]),
        ]));
      });
      table.tHead.append(tr);
    }
    Array.from(table.tHead.rows[0].cells).forEach((th, i) => {
      th.querySelector('.label').textContent = columns[i].name ? columns[i].label : headLabel(columns[i]);
    });
    markSorted(id);
  }

  function markSorted(id) {
    const sort = state.sort[id];
    Array.from($(id).tHead.rows[0].cells).forEach((th) => {
      const active = th.dataset.key === sort.key;
      if (active) th.setAttribute('aria-sort', sort.dir);
      else th.removeAttribute('aria-sort');
      th.querySelector('.arrow').textContent = active ? (sort.dir === 'ascending' ? ' \u25b2' : ' \u25bc') : '';
    });
  }

  /** A heading chosen: numbers sort biggest first, names and days A to Z; again reverses. */
  function sortBy(id, key) {
    const sort = state.sort[id];
    if (sort.key === key) sort.dir = sort.dir === 'ascending' ? 'descending' : 'ascending';
    else state.sort[id] = {key: key, dir: ['name', 'day', 'country'].indexOf(key) >= 0 ? 'ascending' : 'descending'};
    markSorted(id);
    ({breakdown: renderBreakdown, daily: renderDaily, 'by-country': renderCountries})[id]();
    const th = $(id).querySelector('thead th[data-key="' + key + '"]');
    $('sort-status').textContent = ({daily: 'Days', 'by-country': 'Countries'}[id] || 'Rows') + ' sorted by ' +
      th.querySelector('.label').textContent + ', ' + state.sort[id].dir + '.';
  }

  // ---- the breakdown table -------------------------------------------------------------------------

  /** Ad rows grouped into campaign -> ad group -> ad, each level with its sums and their ratios. */
  function buildTree(rows) {
    const campaigns = new Map();
    rows.forEach((row) => {
      const c = String(row.campaign_id);
      const g = String(row.adgroup_id);
      if (!campaigns.has(c)) campaigns.set(c, {id: c, sum: zero(), groups: new Map()});
      const campaign = campaigns.get(c);
      addInto(campaign.sum, row);
      if (!campaign.groups.has(g)) campaign.groups.set(g, {id: g, sum: zero(), ads: []});
      const adgroup = campaign.groups.get(g);
      addInto(adgroup.sum, row);
      adgroup.ads.push({level: 'ad', id: String(row.ad_id), ids: [c, g, String(row.ad_id)], metrics: row});
    });
    return Array.from(campaigns.values()).map((campaign) => ({
      level: 'campaign', id: campaign.id, ids: [campaign.id, '', ''], metrics: withRatios(campaign.sum),
      key: 'c\u0000' + campaign.id,
      children: Array.from(campaign.groups.values()).map((adgroup) => ({
        level: 'adgroup', id: adgroup.id, ids: [campaign.id, adgroup.id, ''], metrics: withRatios(adgroup.sum),
        key: 'g\u0000' + campaign.id + '\u0000' + adgroup.id, children: adgroup.ads,
      })),
    }));
  }

  function cellsRow(tr, cells) {
    cells.forEach((cell) => tr.append(el('td', {class: cell === null ? 'num none' : 'num', text: cell === null ? DASH : cell})));
    return tr;
  }

  /** The breakdown in the chosen order: campaigns sorted, each one's ad groups under it sorted, and so on. */
  function renderBreakdown() {
    const table = $('breakdown');
    const body = clear(table.tBodies[0]);
    const foot = clear(table.tFoot);
    state.table = [];
    const sort = state.sort.breakdown;
    const order = comparator(sort.key, sort.dir, (n) => n.id, (n, key) => (key === 'name' ? n.id : n.metrics[key]));

    const addRow = (parent, node, parents) => {
      const cells = metricCells(node.metrics);
      const nameCell = el('th', {scope: 'row', class: 'name level-' + node.level});
      if (node.children) {
        const open = !state.collapsed.has(node.key);
        nameCell.append(el('button', {type: 'button', class: 'toggle', 'aria-expanded': String(open),
          'aria-label': (open ? 'Collapse ' : 'Expand ') + node.id,
          on: {click: () => toggle(node.key)}, text: open ? '\u25be' : '\u25b8'}));
      }
      nameCell.append(el('span', {text: node.level === 'total' ? 'Total' : node.id}));
      const tr = el('tr', {class: 'row-' + node.level, data: {level: node.level, key: node.ids.join('\u0000')}},
        [nameCell]);
      parent.append(cellsRow(tr, cells));
      state.table.push({tr: tr, level: node.level, ids: node.ids, cells: cells, parents: parents, key: node.key});
    };
    const walk = (nodes, parents) => nodes.slice().sort(order).forEach((node) => {
      addRow(body, node, parents);
      if (node.children) walk(node.children, parents.concat([node.key]));
    });
    walk(state.tree, []);
    if (!state.tree.length) {
      body.append(el('tr', {class: 'empty'}, [el('td', {colspan: COLUMNS.length + 1,
        text: 'No spend, clicks or conversions for this selection.'})]));
    }
    addRow(foot, {level: 'total', id: 'Total', ids: ['', '', ''], metrics: state.totals || withRatios(zero())}, []);
    state.table[state.table.length - 1].tr.classList.add('totals');
    foot.append(changeRow());
    applyCollapsed();
  }

  /** The change of each total from the previous period of the same length. */
  function changeRow() {
    const previous = state.previous;
    const label = previous ? 'vs ' + previous.start + ' to ' + previous.end : 'vs the previous period';
    const tr = el('tr', {class: 'change', data: {level: 'change'}}, [
      el('th', {scope: 'row', class: 'name'}, [el('span', {text: label})])]);
    COLUMNS.forEach((c) => {
      const before = previous && previous.totals ? previous.totals[c.key] : null;
      const text = change(state.totals ? state.totals[c.key] : null, before);
      tr.append(el('td', {class: text === null ? 'num none' : 'num', text: text === null ? DASH : text,
        title: previous ? 'Previous period: ' + (FORMATS[c.kind](before) || DASH) : 'No previous period'}));
    });
    return tr;
  }

  function toggle(key) {
    if (state.collapsed.has(key)) state.collapsed.delete(key);
    else state.collapsed.add(key);
    applyCollapsed();
  }

  function applyCollapsed() {
    state.table.forEach((entry) => {
      entry.tr.hidden = entry.parents.some((key) => state.collapsed.has(key));
      const button = entry.tr.querySelector('button.toggle');
      if (button) {
        const open = !state.collapsed.has(entry.key);
        button.setAttribute('aria-expanded', String(open));
        button.textContent = open ? '\u25be' : '\u25b8';
        const label = entry.level === 'campaign' ? entry.ids[0] : entry.ids[1];
        button.setAttribute('aria-label', (open ? 'Collapse ' : 'Expand ') + label);
      }
    });
  }

  // ---- the table per day ---------------------------------------------------------------------------

  /** Every day of the range with its numbers (zero on a day the report has no row for). */
  function buildDays(rows, start, end) {
    const byDay = new Map(rows.map((row) => [String(row.stat_time_day), row]));
    const days = [];
    for (let d = start; isDay(d) && d <= end && days.length < 400; d = addDays(d, 1)) {
      days.push({day: d, metrics: byDay.get(d) || withRatios(zero())});
    }
    return days;
  }

  function renderDaily() {
    const body = clear($('daily').tBodies[0]);
    const sort = state.sort.daily;
    const order = comparator(sort.key, sort.dir, (d) => d.day, (d, key) => (key === 'day' ? d.day : d.metrics[key]));
    state.days.slice().sort(order).forEach((d) => {
      const tr = el('tr', {data: {day: d.day}}, [el('th', {scope: 'row', class: 'name', text: d.day})]);
      body.append(cellsRow(tr, metricCells(d.metrics)));
    });
  }

  // ---- conversions by country ---------------------------------------------------------------------

  let regionNames = null;

  /** "Netherlands (NL)" for a code, in the browser's own words; "Unknown" for none. */
  function countryName(code) {
    if (!code) return 'Unknown';
    if (regionNames === null) {
      try {
        regionNames = new Intl.DisplayNames(['en'], {type: 'region'});
      } catch (e) {
        regionNames = false;
      }
    }
    let name = '';
    try {
      name = regionNames ? regionNames.of(code) : '';
    } catch (e) {
      name = ''; // not a region code the browser knows: shown as the API gave it
    }
    return name && name !== code ? name + ' (' + code + ')' : code;
  }

  /** Conversions and their value by the converting event's country, for the selection above.
   *  Its own request and error: a failure here leaves the other numbers standing. */
  async function loadCountries() {
    const seq = ++state.countrySeq;
    const q = query();
    const table = $('by-country');
    table.dataset.state = 'loading';
    table.setAttribute('aria-busy', 'true');
    try {
      const result = await report(Object.assign({}, q, {dimensions: 'country', metrics: 'conversions,conversion_value'}));
      if (seq !== state.countrySeq) return; // a newer selection is on its way
      const total = result.totals && isNum(result.totals.conversions) ? result.totals.conversions
        : result.rows.reduce((sum, row) => sum + (isNum(row.conversions) ? row.conversions : 0), 0);
      const value = result.totals && isNum(result.totals.conversion_value) ? result.totals.conversion_value
        : result.rows.reduce((sum, row) => sum + (isNum(row.conversion_value) ? row.conversion_value : 0), 0);
      state.countries = result.rows.map((row) => {
        const code = typeof row.country === 'string' ? row.country : '';
        return {country: code, name: countryName(code), metrics: {conversions: row.conversions,
          conversion_value: row.conversion_value, share: divide(row.conversions, total)}};
      });
      state.countryTotals = {conversions: total, conversion_value: value, share: total > 0 ? 1 : null};
      renderCountries();
      table.dataset.state = 'ready';
      table.dataset.bots = q.include_bots ? 'included' : 'excluded';
      table.dataset.range = q.start + '_' + q.end;
      const known = state.countries.filter((c) => c.country).length;
      const unknown = state.countries.length > known ? ' and conversions of no known country' : '';
      $('countries-status').textContent = (known === 1 ? '1 country' : known + ' countries') + unknown + ', ' +
        q.start + ' to ' + q.end + ', ' + q.events + (q.include_bots ? ', bot traffic included.' : '.');
    } catch (err) {
      if (seq !== state.countrySeq) return;
      table.dataset.state = 'error';
      state.countries = [];
      state.countryTotals = null;
      renderCountries();
      $('countries-status').textContent = 'Could not load conversions by country: ' + describe(err);
      if (err instanceof ApiError && err.status === 401) handle(err);
    } finally {
      if (seq === state.countrySeq) table.removeAttribute('aria-busy');
    }
  }

  function renderCountries() {
    const table = $('by-country');
    const body = clear(table.tBodies[0]);
    const foot = clear(table.tFoot);
    const sort = state.sort['by-country'];
    const order = comparator(sort.key, sort.dir, (c) => c.name, (c, key) => (key === 'country' ? c.name : c.metrics[key]));
    const row = (name, metrics, data) => {
      const tr = el('tr', {data: data}, [el('th', {scope: 'row', class: 'name', text: name})]);
      return cellsRow(tr, COUNTRY_COLUMNS.map((c) => FORMATS[c.kind](metrics[c.key])));
    };
    state.countries.slice().sort(order).forEach((c) => body.append(row(c.name, c.metrics, {country: c.country})));
    if (!state.countries.length) {
      body.append(el('tr', {class: 'empty'}, [el('td', {colspan: COUNTRY_COLUMNS.length + 1,
        text: table.dataset.state === 'error' ? DASH : 'No conversions for this selection.'})]));
    }
    if (state.countryTotals) {
      const tr = row('Total', state.countryTotals, {level: 'total'});
      tr.classList.add('totals');
      foot.append(tr);
    }
  }

  // ---- CSV (what the table shows, built here) ------------------------------------------------------

  function csvCell(value) {
    let text = value === null || value === undefined ? '' : String(value);
    // No formulas in spreadsheets (OWASP): the rule of reporting/spreadsheet.py; plain numbers stay numbers.
    if (/^[=+\-@\t\r]/.test(text) && !/^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/.test(text)) text = "'" + text;
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function csvText() {
    const cur = state.currency ? '_' + state.currency.toLowerCase() : '';
    const header = ['level', 'campaign_id', 'adgroup_id', 'ad_id']
      .concat(COLUMNS.map((c) => c.key + (c.kind === 'money' ? cur : '')));
    const lines = [header];
    state.table.filter((entry) => !entry.tr.hidden).forEach((entry) => {
      lines.push([entry.level].concat(entry.ids, entry.cells));
    });
    return lines.map((line) => line.map(csvCell).join(',')).join('\r\n') + '\r\n';
  }

  function downloadCsv() {
    const q = query();
    const blob = new Blob([csvText()], {type: 'text/csv;charset=utf-8'});
    const url = URL.createObjectURL(blob);
    const safe = (s) => String(s).replace(/[^A-Za-z0-9_.-]+/g, '-');
    const name = 'clicktrail-' + safe(state.advertiser ? state.advertiser.advertiser_id : 'report') + '-' +
      q.start + '_' + q.end + '-' + safe(q.events) + '-' + q.model + (q.include_bots ? '-with-bots' : '') + '.csv';
    const a = el('a', {href: url, download: name, hidden: true});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---- the chart (inline SVG) ----------------------------------------------------------------------

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(value)));
    const f = value / exp;
    const nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return nice * exp;
  }

  function axisLabel(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + 'M';
    if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + 'k';
    return String(Math.round(v * 100) / 100);
  }

  /** The chosen metric per day, one bar a day (none where it is zero or has no number). */
  function renderChart() {
    const select = $('chart-metric');
    const column = COLUMNS.find((c) => c.key === select.value);
    const name = select.options[select.selectedIndex].textContent;
    const unit = column.kind === 'money' && state.currency ? ' ' + state.currency : '';
    $('chart-caption').textContent = name + (unit ? ' (' + state.currency + ')' : '') + ' per day';
    const host = clear($('chart'));
    host.dataset.metric = column.key;
    if (!state.days.length) return;
    const days = state.days;
    const value = (d) => d.metrics[column.key];
    const W = 640;
    const H = 220;
    const left = 48;
    const right = 8;
    const top = 10;
    const bottom = 28;
    const plotW = W - left - right;
    const plotH = H - top - bottom;
    const max = niceMax(days.reduce((peak, d) => (isNum(value(d)) ? Math.max(peak, value(d)) : peak), 0));
    const y = (v) => top + plotH - (v / max) * plotH;
    const root = svg('svg', {viewBox: '0 0 ' + W + ' ' + H, role: 'img', class: 'chart-svg',
      'aria-label': name + ' per day; the numbers are in the table below'});
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      root.append(svg('line', {x1: left, x2: W - right, y1: y(v), y2: y(v), class: i ? 'grid' : 'axis'}));
      root.append(svgText(left - 6, y(v) + 4, axisLabel(v), 'tick y'));
    }
    const slot = plotW / days.length;
    const barW = Math.max(1, Math.min(40, slot * 0.7));
    const every = Math.max(1, Math.ceil(days.length / 8));
    days.forEach((d, i) => {
      const v = value(d);
      if (isNum(v) && v > 0) {
        const x = left + slot * i + (slot - barW) / 2;
        const rect = svg('rect', {x: x.toFixed(2), y: y(v).toFixed(2), width: barW.toFixed(2),
          height: Math.max(0.5, y(0) - y(v)).toFixed(2), class: 'bar', 'data-day': d.day});
        const title = svg('title');
        title.textContent = d.day + ' \u00b7 ' + name + ': ' + FORMATS[column.kind](v) + unit;
        rect.append(title);
        root.append(rect);
      }
      if (i % every === 0) root.append(svgText(left + slot * i + slot / 2, H - 10, d.day.slice(5), 'tick x'));
    });
    host.append(root);
  }

  // ---- wide tables scroll in their own box, with a shadow on the side there is more -----------------

  function watchOverflow(wrap) {
    const box = wrap.parentElement;
    const update = () => {
      const more = wrap.scrollWidth - wrap.clientWidth;
      box.classList.toggle('more-left', more > 1 && wrap.scrollLeft > 1);
      box.classList.toggle('more-right', more > 1 && wrap.scrollLeft < more - 1);
    };
    wrap.addEventListener('scroll', update, {passive: true});
    window.addEventListener('resize', update);
    if (typeof ResizeObserver === 'function') {
      const observer = new ResizeObserver(update);
      observer.observe(wrap);
      Array.from(wrap.children).forEach((child) => observer.observe(child));
    }
    update();
  }

  /** `table` in a box of its own that scrolls sideways (focusable, so keys scroll it too). */
  function scrollBox(table, label) {
    const wrap = el('div', {class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': label}, [table]);
    const box = el('div', {class: 'scroll-box'}, [wrap]);
    watchOverflow(wrap);
    return box;
  }

  // ---- recent conversions and their explanation ----------------------------------------------------

  async function loadConversions() {
    const seq = ++state.convSeq;
    const q = query();
    const list = clear($('conversions'));
    list.append(el('li', {class: 'hint', text: 'Loading\u2026'}));
    try {
      const body = await api('/v1/conversions', {start: q.start, end: q.end, timezone: q.timezone, model: q.model,
        events: q.events, limit: 50});
      if (seq !== state.convSeq) return;
      clear(list);
      // Only the chosen event (the API is asked for it too; this keeps the list right either way).
      const rows = (body.rows || []).filter((row) => !q.events || row.event === q.events);
      if (!rows.length) list.append(el('li', {class: 'hint', text: 'No conversions in this range.'}));
      rows.forEach((row) => {
        // A bot's conversion is credited to nothing here (not organic): reports count it with bot traffic.
        const where = row.matched_by === 'bot' ? "a bot's, counted only with bot traffic included"
          : row.campaign_id ? 'campaign ' + row.campaign_id + (row.ad_id ? ', ad ' + row.ad_id : '') +
          (row.touch_kind ? ' (' + row.touch_kind + ')' : '') : 'organic';
        // In the event's own currency when the API names it; unlabelled otherwise (never a guess).
        const value = isNum(row.value) ? ', value ' + amount(row.value, row.currency) : '';
        const button = el('button', {type: 'button', class: 'conversion', data: {eventId: String(row.event_id)},
          on: {click: () => explain(String(row.event_id), button)}}, [
          el('span', {class: 'when', text: timeIn(row.conversion_time, q.timezone)}),
          el('span', {class: 'what', text: String(row.event) + value + ' \u00b7 ' + where}),
          el('span', {class: 'id', text: 'event_id ' + row.event_id}),
        ]);
        list.append(el('li', null, [button]));
      });
    } catch (err) {
      if (seq !== state.convSeq) return;
      clear(list).append(el('li', {class: 'hint', text: 'Could not load conversions: ' + describe(err)}));
      handle(err, 'Could not load recent conversions');
    }
  }

  const MODEL_NAMES = ['last_click', 'first_click', 'linear', 'time_decay', 'position_based'];

  function touchLabel(t) {
    return t.kind + ' ' + t.touch_id + ' \u2014 campaign ' + t.campaign_id + ' / ad group ' + t.adgroup_id +
      ' / ad ' + t.ad_id;
  }

  async function explain(eventId, button) {
    const seq = ++state.explainSeq;
    document.querySelectorAll('button.conversion[aria-pressed]').forEach((b) => b.removeAttribute('aria-pressed'));
    button.setAttribute('aria-pressed', 'true');
    const box = clear($('explanation'));
    box.append(el('p', {class: 'hint', text: 'Loading the explanation of ' + eventId + '\u2026'}));
    try {
      const body = await api('/v1/conversions/' + encodeURIComponent(eventId) + '/attribution');
      if (seq !== state.explainSeq) return;
      clear(box);
      (body.conversions || []).forEach((conv) => box.append(explanation(conv)));
      if (!(body.conversions || []).length) box.append(el('p', {text: 'No explanation was returned.'}));
    } catch (err) {
      if (seq !== state.explainSeq) return;
      clear(box).append(el('p', {class: 'error-inline', text: 'Could not explain ' + eventId + ': ' + describe(err)}));
      if (err instanceof ApiError && err.status === 401) handle(err);
    }
  }

  function explanation(conv) {
    const tz = $('f-timezone').value.trim();
    const touches = conv.touchpoints || [];
    const windows = conv.windows || {};
    const section = el('article', {class: 'explain'}, [
      el('h3', {text: conv.event + ' ' + conv.event_id}),
      el('p', {text: 'Pixel ' + conv.pixel_id + ', at ' + timeIn(conv.conversion_time, tz) +
        (isNum(conv.value) ? ', value ' + amount(conv.value, conv.currency) : '') +
        ', revision ' + conv.revision + '.'}),
      el('p', {text: 'Windows: ' + windows.click_days + '-day click, ' +
        (windows.view_days ? windows.view_days + '-day view' : 'view-through off') + '. ' +
        (conv.attributed ? 'Attributed.' : 'Not attributed: ' + ((conv.not_attributed_because || []).map((r) => r.message)
          .join('; ') || 'no touchpoint (organic)') + '.')}),
    ]);

    section.append(el('h4', {text: 'Credited, by model'}));
    const credited = el('ul', {class: 'credited'});
    MODEL_NAMES.forEach((model) => {
      const winners = touches.filter((t) => t.credit && t.credit[model] > 0);
      const text = winners.length
        ? winners.map((t) => touchLabel(t) + (winners.length > 1 ? ' (' + percent(t.credit[model]) + ')' : '')).join('; ')
        : 'no touchpoint (organic)';
      credited.append(el('li', {data: {model: model}}, [el('strong', {text: model.replace(/_/g, ' ') + ': '}), text]));
    });
    section.append(credited);

    section.append(el('h4', {text: 'Touchpoints considered (' + touches.length + ')'}));
    if (!touches.length) {
      section.append(el('p', {text: 'None: no click or impression shares an identity with this conversion within ' +
        'the longest windows (28-day click, 7-day view).'}));
    }
    const list = el('ol', {class: 'touches'});
    const eligible = touches.filter((t) => t.eligible);
    touches.forEach((t) => {
      const facts = t.kind + ' at ' + timeIn(t.touch_time, tz) + ', ' + t.days_before_conversion +
        ' days before the conversion, matched by ' + t.matched_by;
      const item = el('li', {class: t.eligible ? 'eligible' : 'ineligible'}, [
        el('div', {class: 'touch-id', text: touchLabel(t)}),
        el('div', {text: facts}),
      ]);
      if (!t.eligible) {
        item.append(el('div', {class: 'why', text: 'Not credited: ' + (t.not_credited_because || 'not eligible')}));
      } else {
        const zeroes = MODEL_NAMES.filter((m) => !(t.credit && t.credit[m] > 0));
        const reasons = zeroes.map((m) => {
          if (m === 'last_click') return 'last click: a later eligible touchpoint exists';
          if (m === 'first_click') return 'first click: an earlier eligible touchpoint exists';
          return m.replace(/_/g, ' ') + ': no credit';
        });
        const shares = MODEL_NAMES.filter((m) => t.credit && t.credit[m] > 0)
          .map((m) => m.replace(/_/g, ' ') + ' ' + percent(t.credit[m]));
        item.append(el('div', {class: 'credit', text: 'Eligible' + (eligible.length > 1 ? ' (one of ' + eligible.length + ')' : '') +
          '. Credit: ' + (shares.length ? shares.join(', ') : 'none')}));
        if (reasons.length) item.append(el('div', {class: 'why', text: 'No credit under ' + reasons.join('; ')}));
      }
      list.append(item);
    });
    section.append(list);
    if (conv.rules) section.append(el('p', {class: 'hint', text: 'Rules: ' + conv.rules + '.'}));
    return section;
  }

  // ---- pixels --------------------------------------------------------------------------------------

  /** Renders each pixel's diagnostics; resolves to the event names seen on any of them. */
  async function loadPixels(advertiser) {
    const host = clear($('pixels'));
    const pixels = advertiser.pixels || [];
    if (!pixels.length) {
      host.append(el('p', {class: 'hint', text: 'No pixel yet: create one with clicktrail pixel create.'}));
      return [];
    }
    const events = [];
    const cards = pixels.map((pixel) => {
      const card = el('article', {class: 'pixel', data: {pixelId: String(pixel.pixel_id)}}, [
        el('h3', {text: 'Pixel ' + pixel.pixel_id}),
        el('p', {class: 'domains', text: 'Domains: ' + ((pixel.domains || []).join(', ') || 'none')}),
        el('p', {class: 'hint', text: 'Loading diagnostics\u2026'}),
      ]);
      host.append(card);
      return card;
    });
    await Promise.all(pixels.map(async (pixel, i) => {
      const card = cards[i];
      try {
        const diag = await api('/v1/pixels/' + encodeURIComponent(pixel.pixel_id) + '/diagnostics');
        (diag.events || []).forEach((e) => events.push(String(e.event)));
        card.lastChild.remove();
        renderDiagnostics(card, diag);
      } catch (err) {
        card.lastChild.remove();
        card.append(el('p', {class: 'error-inline', text: 'Could not load diagnostics: ' + describe(err)}));
        if (err instanceof ApiError && err.status === 401) handle(err);
      }
    }));
    return events;
  }

  function renderDiagnostics(card, diag) {
    const tz = $('f-timezone').value.trim();
    const share = (x) => (isNum(x) ? percent(x) : DASH);
    const rejected = Object.keys(diag.rejected || {});
    const facts = [
      ['Last event', diag.last_event_at ? timeIn(diag.last_event_at, tz) : 'none yet'],
      ['Received (7 days)', isNum(diag.received_7d) ? String(diag.received_7d) : DASH],
      ['Duplicates merged (7 days)', isNum(diag.duplicates_merged_7d) ? String(diag.duplicates_merged_7d) : DASH],
      ['With a click id (7 days)', share(diag.click_id_share_7d)],
      ['Matched to an ad (7 days)', share(diag.matched_share_7d)],
      ['Rejected', rejected.length ? rejected.map((k) => k + ': ' + diag.rejected[k]).join(', ') : 'none'],
    ];
    // Servers that convert currencies count the conversions they could not (no exchange rate).
    let unconverted = 0;
    Object.keys(diag).filter((k) => k.indexOf(UNCONVERTED) === 0 && isNum(diag[k])).forEach((k) => {
      const period = k.slice(UNCONVERTED.length).replace(/^_/, '').replace(/_?(\d+)d$/, '$1 days').replace(/_/g, ' ');
      facts.push(['Without an exchange rate' + (period ? ' (' + period + ')' : ''), count(diag[k])]);
      unconverted = Math.max(unconverted, diag[k]);
    });
    const dl = el('dl', {class: 'facts'});
    facts.forEach((f) => { dl.append(el('dt', {text: f[0]}), el('dd', {text: f[1]})); });
    card.append(dl);
    if (unconverted > 0) card.append(el('p', {class: 'warning', text: unconvertedText(unconverted)}));

    const rows = diag.events || [];
    const table = el('table', {class: 'events'}, [el('thead', null, [el('tr', null, [
      el('th', {scope: 'col', text: 'Event'}), el('th', {scope: 'col', text: 'Source'}),
      el('th', {scope: 'col', text: 'Last 24 h'}), el('th', {scope: 'col', text: 'Last 7 days'})])])]);
    const tbody = el('tbody');
    rows.forEach((r) => tbody.append(el('tr', null, [el('td', {text: r.event}), el('td', {text: r.source}),
      el('td', {class: 'num', text: String(r.last_24h)}), el('td', {class: 'num', text: String(r.last_7d)})])));
    if (!rows.length) tbody.append(el('tr', null, [el('td', {colspan: 4, text: 'No events in the last 7 days.'})]));
    table.append(tbody);
    card.append(scrollBox(table, 'Events of pixel ' + card.dataset.pixelId));

    if (diag.snippet) {
      const code = el('code', {text: diag.snippet});
      const copy = el('button', {type: 'button', class: 'copy', text: 'Copy snippet'});
      copy.addEventListener('click', () => {
        const done = () => { copy.textContent = 'Copied'; setTimeout(() => { copy.textContent = 'Copy snippet'; }, 1500); };
        if (navigator.clipboard && navigator.clipboard.writeText) {
          navigator.clipboard.writeText(diag.snippet).then(done, () => selectText(code));
        } else {
          selectText(code);
        }
      });
      card.append(el('div', {class: 'snippet-head'}, [el('h4', {text: 'Paste into the <head> of every page'}), copy]),
        el('pre', {class: 'snippet'}, [code]));
    }
  }

  function selectText(node) {
    const range = document.createRange();
    range.selectNodeContents(node);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  // ---- scheduled reports ---------------------------------------------------------------------------

  const RANGE_LABELS = {today: 'Today', yesterday: 'Yesterday', last_7_days: 'Last 7 days',
    last_14_days: 'Last 14 days', last_30_days: 'Last 30 days', this_month: 'This month'};
  const WEEKDAY_LABELS = {mon: 'Monday', tue: 'Tuesday', wed: 'Wednesday', thu: 'Thursday', fri: 'Friday',
    sat: 'Saturday', sun: 'Sunday'};
  const RUN_LABELS = {delivered: 'delivered', retrying: 'failed, retrying', failed: 'failed, given up',
    pending: 'in progress'};

  /** The schedules section's content (read only). */
  function schedulesContent(body) {
    const list = Array.isArray(body.schedules) ? body.schedules : [];
    if (!list.length) return el('p', {class: 'hint', text: 'No scheduled report yet.'});
    return scrollBox(scheduleTable(list), 'Table of scheduled reports');
  }

  function scheduleTable(list) {
    const heads = ['Report', 'When', 'Delivered to', 'Status', 'Next run', 'Last run'];
    const table = el('table', {id: 'schedule-table', class: 'schedules'}, [
      el('caption', {class: 'visually-hidden', text: 'Scheduled reports, oldest first'}),
      el('thead', null, [el('tr', null, heads.map((h) => el('th', {scope: 'col', text: h})))])]);
    const tbody = el('tbody');
    list.forEach((s) => {
      const status = s.status === 'paused' ? 'paused' : 'active';
      tbody.append(el('tr', {data: {scheduleId: String(s.id), status: status}}, [
        el('th', {scope: 'row', text: scheduleReport(s)}),
        el('td', {text: scheduleWhen(s)}),
        el('td', {text: scheduleTarget(s)}),
        el('td', null, [el('span', {class: 'badge ' + status, text: status === 'paused' ? 'Paused' : 'Active'})]),
        el('td', {text: s.next_run ? timeIn(s.next_run, s.timezone) : DASH}),
        el('td', {class: 'last-run', data: {state: (s.last_run && s.last_run.state) || 'none'}}, scheduleLastRun(s)),
      ]));
    });
    table.append(tbody);
    return table;
  }

  function scheduleReport(s) {
    const metrics = s.report && typeof s.report.metrics === 'string' ? ' \u00b7 ' + s.report.metrics : '';
    return (RANGE_LABELS[s.range] || String(s.range)) + ' (' + String(s.format || 'csv').toUpperCase() + ')' + metrics;
  }

  function scheduleWhen(s) {
    const day = s.weekday ? 'Every ' + (WEEKDAY_LABELS[s.weekday] || String(s.weekday)) : 'Daily';
    return day + ' at ' + String(s.at) + ' ' + String(s.timezone);
  }

  function scheduleTarget(s) {
    if (s.email && Array.isArray(s.email.to)) return 'E-mail: ' + s.email.to.join(', ');
    if (s.webhook && typeof s.webhook.url === 'string') {
      let host = s.webhook.url;
      try { host = new URL(s.webhook.url).host; } catch (e) { /* shown as given */ }
      return 'Webhook: ' + host;
    }
    return DASH;
  }

  function scheduleLastRun(s) {
    const run = s.last_run;
    if (!run) return ['never yet'];
    const what = RUN_LABELS[run.state] || String(run.state);
    const parts = [String(run.period) + ': ' + what + (run.attempts > 1 ? ' (' + run.attempts + ' attempts)' : '')];
    if (run.error) parts.push(el('br'), el('span', {class: 'hint', text: String(run.error)}));
    return parts;
  }

  // ---- alert rules ---------------------------------------------------------------------------------

  const RULE_METRICS = {event_count: 'events', conversions: 'Conversions', conversion_value: 'Conversion value',
    cpa: 'CPA', clicks: 'Clicks', spend: 'Spend', roas: 'ROAS'};
  const RULE_STATES = {ok: 'OK', firing: 'Firing', paused: 'Paused'};

  /** "PageView events of pixel P1", "CPA of campaign A", "Conversions (Purchase) of the advertiser". */
  function ruleWatches(rule) {
    const scope = rule.scope || {};
    const level = Object.keys(scope)[0];
    const where = level ? level.replace(/_id$/, '').replace('adgroup', 'ad group') + ' ' + scope[level]
      : 'the advertiser';
    const what = rule.metric === 'event_count' ? rule.event + ' events'
      : (RULE_METRICS[rule.metric] || rule.metric) + (rule.event ? ' (' + rule.event + ')' : '');
    return what + ' of ' + where + ', last ' + rule.window;
  }

  function ruleCondition(c) {
    if (!c) return DASH;
    if (c.change) return (c.change === 'fall' ? 'falls' : 'rises') + ' by ' + c.percent + '% or more vs the window before';
    return c.op + ' ' + c.threshold;
  }

  function ruleValue(rule) {
    if (isNum(rule.value)) return String(Math.round(rule.value * 1e6) / 1e6);
    return rule.note ? DASH + ' (' + rule.note + ')' : DASH;
  }

  function ruleNotification(n, tz) {
    if (!n) return 'none yet';
    const what = (n.state === 'firing' ? 'Firing' : 'Resolved') + ' notice ' + n.status;
    return what + (n.error ? ' (' + n.error + ')' : '') + (n.at ? ', ' + timeIn(new Date(n.at).toISOString(), tz) : '');
  }

  /** The rules section's content: each rule with where it stands (GET /v1/rules). */
  function rulesContent(body) {
    const list = Array.isArray(body.rules) ? body.rules : [];
    if (!list.length) return el('p', {class: 'hint', text: 'No alert rules yet.'});
    const tz = $('f-timezone').value.trim();
    const heads = ['Rule', 'Watches', 'Condition', 'State', 'Last value', 'Last evaluated', 'Last notification'];
    const table = el('table', {id: 'rules-table', class: 'rules'}, [
      el('caption', {class: 'visually-hidden', text: 'Alert rules and their state'}),
      el('thead', null, [el('tr', null, heads.map((h) => el('th', {scope: 'col', text: h})))])]);
    const tbody = el('tbody');
    list.forEach((rule) => {
      const label = RULE_STATES[rule.state] || String(rule.state);
      const since = rule.since ? ' since ' + timeIn(rule.since, tz) : '';
      tbody.append(el('tr', {data: {ruleId: String(rule.id), state: String(rule.state)}}, [
        el('th', {scope: 'row', class: 'name', text: rule.name}),
        el('td', {class: 'name', text: ruleWatches(rule)}),
        el('td', {class: 'name', text: ruleCondition(rule.condition)}),
        el('td', {class: 'name rule-' + rule.state}, [el('strong', {text: label}), document.createTextNode(since)]),
        el('td', {class: 'num', text: ruleValue(rule)}),
        el('td', {class: 'name', text: rule.last_evaluated ? timeIn(rule.last_evaluated, tz) : 'not yet'}),
        el('td', {class: 'name', text: ruleNotification(rule.last_notification, tz)}),
      ]));
    });
    table.append(tbody);
    return scrollBox(table, 'Alert rules');
  }

  /** What a screen reader is told when the rules change on a refresh: each rule whose state moved. */
  function rulesNews(before, after) {
    const was = new Map((before.rules || []).map((rule) => [String(rule.id), rule.state]));
    const moved = (after.rules || []).filter((rule) => was.has(String(rule.id)) && was.get(String(rule.id)) !== rule.state)
      .map((rule) => 'rule ' + rule.name + ' is now ' + (RULE_STATES[rule.state] || String(rule.state)));
    return moved.length ? 'Alert rules updated: ' + moved.join('; ') + '.' : 'Alert rules updated.';
  }

  // ---- live sections: alert rules and scheduled reports are read again while the page is in view ---
  //
  // One timer per section, set again whenever a read ends (so timers never stack up, however often
  // "Refresh" is pressed; the newest read's answer wins), none while the tab is hidden, all dropped on
  // sign-out. A read shows nothing until its answer is in: the old
  // table stays meanwhile, and is left untouched when nothing changed (no flicker, no lost scroll).

  const LIVE = {
    rules: {path: '/v1/rules', what: 'alert rules', content: rulesContent, news: rulesNews},
    schedules: {path: '/v1/schedules', what: 'scheduled reports', content: schedulesContent,
      news: () => 'Scheduled reports updated.'},
  };

  function refreshLive(advertiser) {
    return Promise.all(Object.keys(LIVE).map((name) => refreshSection(name, advertiser)));
  }

  async function refreshSection(name, advertiser) {
    const live = state.live;
    clearTimeout(live.timer[name]);
    live.timer[name] = null;
    live.at[name] = Date.now();
    await loadLive(name, advertiser);
    planSection(name, advertiser);
  }

  /** The next read of a section, LIVE_EVERY_MS after the last one began (at least a second from now). */
  function planSection(name, advertiser) {
    const live = state.live;
    clearTimeout(live.timer[name]);
    live.timer[name] = null;
    if (state.advertiser !== advertiser || document.visibilityState === 'hidden') return;
    const wait = Math.max(1000, live.at[name] + LIVE_EVERY_MS - Date.now());
    live.timer[name] = setTimeout(() => refreshSection(name, advertiser), wait);
  }

  function stopLive() {
    const live = state.live;
    Object.keys(LIVE).forEach((name) => {
      clearTimeout(live.timer[name]);
      live.timer[name] = null;
      live.seq[name]++; // an answer on its way is dropped
      live.shown[name] = null;
    });
  }

  function clearLive(name) {
    const host = clear($(name));
    host.dataset.state = 'empty';
    host.removeAttribute('aria-busy');
    $(name + '-updated').textContent = '';
    $(name + '-news').textContent = '';
  }

  function onVisibility() {
    const advertiser = state.advertiser;
    if (!advertiser) return;
    Object.keys(LIVE).forEach((name) => {
      if (document.visibilityState === 'hidden') {
        clearTimeout(state.live.timer[name]);
        state.live.timer[name] = null;
      } else if (Date.now() - state.live.at[name] >= LIVE_EVERY_MS) {
        refreshSection(name, advertiser); // back in view after a while: read now
      } else {
        planSection(name, advertiser);
      }
    });
  }

  /** Reads one section and shows it; an answer older than one asked for since is dropped, and an
   *  error on a refresh keeps what was shown (saying so), as the error stays inside the section. */
  async function loadLive(name, advertiser) {
    const spec = LIVE[name];
    const live = state.live;
    const host = $(name);
    const seq = ++live.seq[name];
    const current = () => state.advertiser === advertiser && seq === live.seq[name];
    if (host.dataset.state === 'empty') {
      host.dataset.state = 'loading';
      host.replaceChildren(el('p', {class: 'hint', text: 'Loading ' + spec.what + '\u2026'}));
    }
    host.setAttribute('aria-busy', 'true');
    let body;
    try {
      body = await api(spec.path);
    } catch (err) {
      if (!current()) return;
      host.removeAttribute('aria-busy');
      if (host.dataset.state === 'ready') {
        $(name + '-updated').textContent = 'Could not refresh the ' + spec.what + ' at ' + timeNow() + ': ' +
          describe(err) + '. Shown as of ' + live.shown[name].at + '.';
      } else {
        host.replaceChildren(el('p', {class: 'error-inline', text: 'Could not load the ' + spec.what + ': ' +
          describe(err)}));
        host.dataset.state = 'error';
      }
      if (err instanceof ApiError && err.status === 401) handle(err);
      return;
    }
    if (!current()) return; // signed out, or a newer read is on its way
    host.removeAttribute('aria-busy');
    const signature = JSON.stringify(body) + '\u0000' + $('f-timezone').value.trim();
    const before = live.shown[name];
    if (!before || before.signature !== signature || host.dataset.state !== 'ready') {
      replaceKeeping(host, spec.content(body));
      if (before) $(name + '-news').textContent = spec.news(before.body, body);
    }
    live.shown[name] = {signature: signature, body: body, at: timeNow()};
    host.dataset.state = 'ready';
    $(name + '-updated').textContent = 'Updated ' + live.shown[name].at + '; read again every minute while this page is in view.';
  }

  /** The time now, as the page shows times (the report's time zone). */
  function timeNow() {
    return timeIn(new Date().toISOString(), $('f-timezone').value.trim());
  }

  /** Puts `fresh` in place of what `host` holds, keeping the table's sideways scroll and the focus. */
  function replaceKeeping(host, fresh) {
    const oldWrap = host.querySelector('.table-wrap');
    const hadFocus = oldWrap !== null && oldWrap.contains(document.activeElement);
    const left = oldWrap ? oldWrap.scrollLeft : 0;
    host.replaceChildren(fresh);
    const wrap = host.querySelector('.table-wrap');
    if (wrap) {
      wrap.scrollLeft = left;
      if (hadFocus) wrap.focus({preventScroll: true});
    }
  }

  // ---- wiring --------------------------------------------------------------------------------------

  function init() {
    $('sign-in-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = $('token').value.trim();
      if (token) signIn(token);
    });
    $('sign-out').addEventListener('click', signOut);
    $('download-csv').addEventListener('click', downloadCsv);
    $('filters').addEventListener('submit', (ev) => ev.preventDefault());
    ['f-event', 'f-model', 'f-click-window', 'f-view-window', 'f-date-basis'].forEach((id) => {
      $(id).addEventListener('change', reloadAll);
    });
    ['f-start', 'f-end'].forEach((id) => {
      $(id).addEventListener('change', () => {
        $('f-preset').value = 'custom'; // days chosen by hand
        reloadAll();
      });
    });
    $('f-preset').addEventListener('change', () => {
      if (applyPreset()) reloadAll();
      else $('f-start').focus(); // custom: the days are the user's to choose
    });
    $('f-timezone').addEventListener('change', () => {
      const tz = $('f-timezone').value.trim();
      if (!validZone(tz)) {
        showError(new ApiError(0, 'invalid_field', 'timezone', 'time zone ' + JSON.stringify(tz) +
          ' is not an IANA time zone name (e.g. Europe/Berlin)'), 'Time zone');
        return;
      }
      applyPreset(); // "today" of the new zone
      reloadAll();
    });
    $('f-bots').addEventListener('change', botsChanged);
    // A link or an edited address with #bots=include (or without it) while signed in.
    window.addEventListener('hashchange', () => {
      if (!state.advertiser || hashState().bots === $('f-bots').checked) return;
      $('f-bots').checked = hashState().bots;
      botsChanged();
    });
    Object.keys(LIVE).forEach((name) => {
      $(name + '-refresh').addEventListener('click', () => {
        if (state.advertiser) refreshSection(name, state.advertiser);
      });
    });
    document.addEventListener('visibilitychange', onVisibility);
    $('chart-metric').addEventListener('change', renderChart);
    document.querySelectorAll('.table-wrap').forEach(watchOverflow);
    if (typeof Intl.supportedValuesOf === 'function') {
      const list = $('timezones');
      const zones = Intl.supportedValuesOf('timeZone');
      if (zones.indexOf('UTC') < 0) zones.unshift('UTC');
      zones.forEach((tz) => list.append(el('option', {value: tz})));
    }
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
  }

  init();
})();
