/* clicktrail advertiser dashboard. Plain ES2017, no build step, no dependencies.
 *
 * Reads the API with a `reports` token (kept in sessionStorage, sent as a Bearer token).
 * Everything that comes from the API is put in the page with textContent or setAttribute on
 * elements built here, never parsed as HTML.
 */
'use strict';

(function () {
  const TOKEN_KEY = 'clicktrail.dashboard.token';
  const METRICS = ['spend', 'clicks', 'conversions', 'conversion_value', 'cvr', 'cpa', 'roas'];
  const PAGE_SIZE = 1000;
  const MAX_PAGES = 50;
  const SVG = 'http://www.w3.org/2000/svg';
  const PALETTE_SIZE = 8;
  const DASH = '\u2014';

  const state = {
    token: null,
    advertiser: null,
    seq: 0,
    convSeq: 0,
    explainSeq: 0,
    collapsed: new Set(),
    table: [], // {tr, level, ids, cells} in table order, totals last
    currency: '',
  };

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
    return {rows: rows, totals: first.totals || null, query: first.query || {}};
  }

  // ---- formatting ----------------------------------------------------------------------------------

  const isNum = (x) => typeof x === 'number' && isFinite(x);
  const money = (x) => (isNum(x) ? x.toFixed(2) : null);
  const count = (x) => (isNum(x) ? String(Math.round(x * 100) / 100) : null);
  const integer = (x) => (isNum(x) ? String(Math.round(x)) : null);
  const percent = (x) => (isNum(x) ? (x * 100).toFixed(2) + '%' : null);
  const ratio = (x) => (isNum(x) ? x.toFixed(2) : null);
  const divide = (a, b) => (isNum(a) && isNum(b) && b !== 0 ? a / b : null);

  /** The cells shown for a row of metrics, in column order; null where there is no number. */
  function metricCells(m) {
    return [money(m.spend), integer(m.clicks), count(m.conversions), money(m.conversion_value),
      percent(m.cvr), money(m.cpa), ratio(m.roas)];
  }

  function withRatios(m) {
    return Object.assign({}, m, {
      cvr: divide(m.conversions, m.clicks),
      cpa: divide(m.spend, m.conversions),
      roas: divide(m.conversion_value, m.spend),
    });
  }

  function addInto(sum, row) {
    ['spend', 'clicks', 'conversions', 'conversion_value'].forEach((k) => {
      if (isNum(row[k])) sum[k] += row[k];
    });
    return sum;
  }

  const zero = () => ({spend: 0, clicks: 0, conversions: 0, conversion_value: 0});

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
    state.collapsed.clear();
    state.table = [];
    $('app').hidden = true;
    $('sign-in').hidden = false;
    $('sign-out').hidden = true;
    $('who').hidden = true;
    $('token').value = '';
    ['chart-conversions', 'chart-value', 'legend', 'conversions', 'pixels', 'f-event'].forEach((id) => clear($(id)));
    clear($('breakdown').tBodies[0]);
    clear($('breakdown').tFoot);
    $('breakdown').dataset.state = 'empty';
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
    const end = dayIn(tz, new Date());
    $('f-timezone').value = tz;
    $('f-end').value = end;
    $('f-start').value = addDays(end, -6);
    $('f-model').value = settings.model || 'last_click';
    $('f-click-window').value = String(isNum(settings.click_window_days) ? settings.click_window_days : 7);
    $('f-view-window').value = String(isNum(settings.view_window_days) ? settings.view_window_days : 1);
    $('f-date-basis').value = 'touch';
    state.currency = settings.currency || '';
    setCurrency(state.currency);
    fillEvents([]);
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

  function setCurrency(currency) {
    const suffix = currency ? ' (' + currency + ')' : '';
    $('h-spend').textContent = 'Spend' + suffix;
    $('h-value').textContent = 'Value' + suffix;
    $('h-cpa').textContent = 'CPA' + suffix;
    $('value-caption').textContent = 'Conversion value per day' + suffix;
  }

  // ---- the query the selectors describe ------------------------------------------------------------

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
    };
  }

  function reloadAll() {
    loadNumbers();
    loadConversions();
  }

  // ---- numbers: chart and table --------------------------------------------------------------------

  async function loadNumbers() {
    const seq = ++state.seq;
    const q = query();
    const table = $('breakdown');
    table.dataset.state = 'loading';
    table.setAttribute('aria-busy', 'true');
    $('download-csv').disabled = true;
    $('status').textContent = 'Loading\u2026';
    try {
      const results = await Promise.all([
        report(Object.assign({}, q, {dimensions: 'campaign_id,adgroup_id,ad_id', metrics: METRICS.join(',')})),
        report(Object.assign({}, q, {dimensions: 'stat_time_day,campaign_id', metrics: 'conversions,conversion_value'})),
      ]);
      if (seq !== state.seq) return; // a newer selection is on its way
      const breakdown = results[0];
      if (breakdown.query.currency) {
        state.currency = breakdown.query.currency;
        setCurrency(state.currency);
      }
      const order = renderTable(breakdown);
      renderCharts(results[1].rows, order, q.start, q.end);
      clearError();
      table.dataset.state = 'ready';
      table.dataset.model = q.model;
      table.removeAttribute('aria-busy');
      $('download-csv').disabled = false;
      const resolved = breakdown.query;
      $('status').textContent = 'Showing ' + q.start + ' to ' + q.end + ' (' + (resolved.timezone || q.timezone) +
        '), ' + q.events + ', ' + (resolved.model || q.model).replace(/_/g, ' ') + ', ' +
        (resolved.click_window !== undefined ? resolved.click_window : q.click_window) + '-day click / ' +
        (resolved.view_window !== undefined ? resolved.view_window : q.view_window) + '-day view window.';
    } catch (err) {
      if (seq !== state.seq) return;
      table.dataset.state = 'error';
      table.removeAttribute('aria-busy');
      $('status').textContent = 'Could not load the numbers.';
      handle(err, 'Could not load the report');
    }
  }

  /** Groups ad rows into campaign -> ad group -> ad; returns campaign ids in display order. */
  function group(rows) {
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
      adgroup.ads.push(row);
    });
    // Biggest spend first (it does not change with the model or windows), then by id.
    const bySpend = (a, b) => (b.sum.spend - a.sum.spend) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
    const list = Array.from(campaigns.values()).sort(bySpend);
    list.forEach((campaign) => {
      campaign.groupList = Array.from(campaign.groups.values()).sort(bySpend);
      campaign.groupList.forEach((adgroup) => {
        adgroup.ads.sort((a, b) => ((b.spend || 0) - (a.spend || 0)) ||
          (String(a.ad_id) < String(b.ad_id) ? -1 : String(a.ad_id) > String(b.ad_id) ? 1 : 0));
      });
    });
    return list;
  }

  function renderTable(breakdown) {
    const table = $('breakdown');
    const body = clear(table.tBodies[0]);
    const foot = clear(table.tFoot);
    state.table = [];
    const campaigns = group(breakdown.rows);

    const addRow = (parent, level, ids, label, metrics, childKey) => {
      const cells = metricCells(metrics);
      const nameCell = el('th', {scope: 'row', class: 'name level-' + level});
      if (childKey) {
        const open = !state.collapsed.has(childKey);
        nameCell.append(el('button', {type: 'button', class: 'toggle', 'aria-expanded': String(open),
          'aria-label': (open ? 'Collapse ' : 'Expand ') + label,
          on: {click: () => toggle(childKey)}, text: open ? '\u25be' : '\u25b8'}));
      }
      nameCell.append(el('span', {text: label}));
      const tr = el('tr', {class: 'row-' + level, data: {level: level, key: ids.join('\u0000')}}, [nameCell]);
      cells.forEach((cell) => tr.append(el('td', {class: cell === null ? 'num none' : 'num', text: cell === null ? DASH : cell})));
      parent.append(tr);
      const entry = {tr: tr, level: level, ids: ids, cells: cells};
      state.table.push(entry);
      return entry;
    };

    if (!campaigns.length) {
      body.append(el('tr', {class: 'empty'}, [el('td', {colspan: 8,
        text: 'No spend, clicks or conversions for this selection.'})]));
    }
    campaigns.forEach((campaign) => {
      const cKey = 'c\u0000' + campaign.id;
      addRow(body, 'campaign', [campaign.id, '', ''], campaign.id, withRatios(campaign.sum), cKey);
      campaign.groupList.forEach((adgroup) => {
        const gKey = 'g\u0000' + campaign.id + '\u0000' + adgroup.id;
        const g = addRow(body, 'adgroup', [campaign.id, adgroup.id, ''], adgroup.id, withRatios(adgroup.sum), gKey);
        g.parents = [cKey];
        adgroup.ads.forEach((ad) => {
          const a = addRow(body, 'ad', [campaign.id, adgroup.id, String(ad.ad_id)], String(ad.ad_id), ad, null);
          a.parents = [cKey, gKey];
        });
      });
    });
    const totals = breakdown.totals ? breakdown.totals
      : withRatios(breakdown.rows.reduce(addInto, zero()));
    const t = addRow(foot, 'total', ['', '', ''], 'Total', totals, null);
    t.tr.classList.add('totals');
    applyCollapsed();
    return campaigns.map((c) => c.id);
  }

  function toggle(key) {
    if (state.collapsed.has(key)) state.collapsed.delete(key);
    else state.collapsed.add(key);
    applyCollapsed();
  }

  function applyCollapsed() {
    state.table.forEach((entry) => {
      entry.tr.hidden = (entry.parents || []).some((key) => state.collapsed.has(key));
      const button = entry.tr.querySelector('button.toggle');
      if (button) {
        const key = entry.level === 'campaign' ? 'c\u0000' + entry.ids[0]
          : 'g\u0000' + entry.ids[0] + '\u0000' + entry.ids[1];
        const open = !state.collapsed.has(key);
        button.setAttribute('aria-expanded', String(open));
        button.textContent = open ? '\u25be' : '\u25b8';
        const label = entry.level === 'campaign' ? entry.ids[0] : entry.ids[1];
        button.setAttribute('aria-label', (open ? 'Collapse ' : 'Expand ') + label);
      }
    });
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
    const header = ['level', 'campaign_id', 'adgroup_id', 'ad_id', 'spend' + cur, 'clicks', 'conversions',
      'conversion_value' + cur, 'cvr', 'cpa' + cur, 'roas'];
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
      q.start + '_' + q.end + '-' + safe(q.events) + '-' + q.model + '.csv';
    const a = el('a', {href: url, download: name, hidden: true});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---- charts (inline SVG) -------------------------------------------------------------------------

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

  function renderCharts(rows, order, start, end) {
    const days = [];
    for (let d = start; d <= end && days.length < 3700; d = addDays(d, 1)) days.push(d);
    const campaigns = order.slice();
    rows.forEach((row) => {
      const c = String(row.campaign_id);
      if (campaigns.indexOf(c) < 0) campaigns.push(c);
    });
    const color = (c) => 's' + (campaigns.indexOf(c) % PALETTE_SIZE);
    const byDay = new Map(days.map((d) => [d, new Map()]));
    rows.forEach((row) => {
      const day = byDay.get(String(row.stat_time_day));
      if (!day) return;
      const c = String(row.campaign_id);
      const cell = day.get(c) || {conversions: 0, conversion_value: 0};
      cell.conversions += isNum(row.conversions) ? row.conversions : 0;
      cell.conversion_value += isNum(row.conversion_value) ? row.conversion_value : 0;
      day.set(c, cell);
    });
    const unit = state.currency ? ' ' + state.currency : '';
    drawChart($('chart-conversions'), days, campaigns, byDay, 'conversions', color, (v) => count(v) + (v === 1 ? ' conversion' : ' conversions'));
    drawChart($('chart-value'), days, campaigns, byDay, 'conversion_value', color, (v) => money(v) + unit);

    const legend = clear($('legend'));
    campaigns.forEach((c) => {
      const swatch = svg('svg', {width: 12, height: 12, 'aria-hidden': 'true'}, [svg('rect', {width: 12, height: 12, class: color(c)})]);
      legend.append(el('li', null, [swatch, el('span', {text: c})]));
    });
    if (!campaigns.length) legend.append(el('li', {class: 'hint', text: 'No conversions in this range.'}));
  }

  function drawChart(host, days, campaigns, byDay, metric, color, describeValue) {
    const W = 640;
    const H = 220;
    const left = 48;
    const right = 8;
    const top = 10;
    const bottom = 28;
    const plotW = W - left - right;
    const plotH = H - top - bottom;
    let peak = 0;
    days.forEach((d) => {
      let total = 0;
      byDay.get(d).forEach((cell) => { total += cell[metric]; });
      peak = Math.max(peak, total);
    });
    const max = niceMax(peak);
    const y = (v) => top + plotH - (v / max) * plotH;
    const root = svg('svg', {viewBox: '0 0 ' + W + ' ' + H, role: 'img', class: 'chart-svg',
      'aria-label': metric.replace('_', ' ') + ' per day per campaign'});
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      root.append(svg('line', {x1: left, x2: W - right, y1: y(v), y2: y(v), class: i ? 'grid' : 'axis'}));
      root.append(svgText(left - 6, y(v) + 4, axisLabel(v), 'tick y'));
    }
    const slot = plotW / Math.max(days.length, 1);
    const barW = Math.max(1, Math.min(40, slot * 0.7));
    const every = Math.max(1, Math.ceil(days.length / 8));
    days.forEach((day, i) => {
      const x = left + slot * i + (slot - barW) / 2;
      let base = 0;
      campaigns.forEach((c) => {
        const cell = byDay.get(day).get(c);
        const v = cell ? cell[metric] : 0;
        if (!(v > 0)) return;
        const rect = svg('rect', {x: x.toFixed(2), y: y(base + v).toFixed(2), width: barW.toFixed(2),
          height: Math.max(0.5, y(base) - y(base + v)).toFixed(2), class: 'bar ' + color(c)});
        const title = svg('title');
        title.textContent = day + ' \u00b7 ' + c + ': ' + describeValue(v);
        rect.append(title);
        root.append(rect);
        base += v;
      });
      if (i % every === 0) root.append(svgText(left + slot * i + slot / 2, H - 10, day.slice(5), 'tick x'));
    });
    clear(host).append(root);
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
        const where = row.campaign_id ? 'campaign ' + row.campaign_id + (row.ad_id ? ', ad ' + row.ad_id : '') +
          (row.touch_kind ? ' (' + row.touch_kind + ')' : '') : 'organic';
        const value = isNum(row.value) ? ', value ' + money(row.value) : '';
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
        (isNum(conv.value) ? ', value ' + money(conv.value) + (conv.currency ? ' ' + conv.currency : '') : '') +
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
    const dl = el('dl', {class: 'facts'});
    facts.forEach((f) => { dl.append(el('dt', {text: f[0]}), el('dd', {text: f[1]})); });
    card.append(dl);

    const rows = diag.events || [];
    const table = el('table', {class: 'events'}, [el('thead', null, [el('tr', null, [
      el('th', {scope: 'col', text: 'Event'}), el('th', {scope: 'col', text: 'Source'}),
      el('th', {scope: 'col', text: 'Last 24 h'}), el('th', {scope: 'col', text: 'Last 7 days'})])])]);
    const tbody = el('tbody');
    rows.forEach((r) => tbody.append(el('tr', null, [el('td', {text: r.event}), el('td', {text: r.source}),
      el('td', {class: 'num', text: String(r.last_24h)}), el('td', {class: 'num', text: String(r.last_7d)})])));
    if (!rows.length) tbody.append(el('tr', null, [el('td', {colspan: 4, text: 'No events in the last 7 days.'})]));
    table.append(tbody);
    card.append(table);

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
    ['f-start', 'f-end', 'f-event', 'f-model', 'f-click-window', 'f-view-window', 'f-date-basis'].forEach((id) => {
      $(id).addEventListener('change', reloadAll);
    });
    $('f-timezone').addEventListener('change', () => {
      const tz = $('f-timezone').value.trim();
      if (!validZone(tz)) {
        showError(new ApiError(0, 'invalid_field', 'timezone', 'time zone ' + JSON.stringify(tz) +
          ' is not an IANA time zone name (e.g. Europe/Berlin)'), 'Time zone');
        return;
      }
      reloadAll();
    });
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
