// The flashsale shop page. Talks only to the public API of the gateway that served it.
// Every piece of data reaches the page through textContent or a property, never as markup
// (the page's CSP requires Trusted Types, so assigning an HTML string anywhere would throw).
'use strict';

(() => {
  const PROBLEM_BASE = 'https://flashsale.dev/problems/';
  const PAYMENT_METHOD = 'pm_card_visa'; // the provider's test card token
  const TICK_MS = 250; // countdowns and hold timers
  const POLL_MS = 1000; // stock polling when the live stream is not available
  const ORDER_POLL_MS = 1000; // while a payment's outcome is being confirmed
  const ORDER_POLL_LIMIT = 60;
  const MAX_RETRIES = 4; // 503 answers retried (same Idempotency-Key) before giving up
  const MAX_QTY_CHOICES = 10;
  const SESSION_MARGIN_MS = 60_000; // a token this close to expiry is replaced
  const QUEUE_POLL_MIN_MS = 500; // waiting-room polls: no more often than this
  const QUEUE_POLL_MAX_MS = 5000; // ...and no less often than this
  const POW_BATCH = 128; // proof-of-work hashes per step (the page stays responsive)
  const POW_MARGIN_MS = 10_000; // a solved challenge this close to expiry is not used
  const RETRYABLE = new Set(['no-leader', 'commit-unknown', 'overloaded', 'unavailable']);
  const STORE = {
    token: 'flashsale.token',
    user: 'flashsale.user',
    expires: 'flashsale.token_expires_ms',
    cart: 'flashsale.cart_id',
    order: 'flashsale.order_id',
    admission: 'flashsale.admission',
    admissionExpires: 'flashsale.admission_expires_ms',
  };
  const BUSY = 'The sale is very busy right now. Please try again in a moment.';
  const MESSAGES = {
    'sold-out': 'Sold out: every unit is sold or held. Units held by others come back if they are not bought in time, so keep this page open.',
    'limit-reached': 'Limit reached: you already hold or bought as many of these as one shopper may.',
    'not-open': 'Not open yet: the sale has not started. The button wakes up when the countdown ends.',
    'sale-closed': 'The sale is over: this product cannot be bought any more.',
    'hold-expired': 'Your hold expired and the units went back on sale. Add them again if any are left.',
    'empty-cart': 'Your cart has no active hold any more (it may have expired).',
    'payment-declined': 'Your payment was declined. You can try again before the deadline.',
    'payments-unavailable': 'Payments are unavailable right now; nothing was charged. Please try again in a moment.',
    'not-pending': 'This order is no longer waiting for payment.',
    'unknown-product': 'This product is not on sale here.',
    'unknown-cart': 'Your cart is gone (it belonged to an earlier session).',
    'unknown-order': 'This order is not known to the shop.',
    'guest-sessions-disabled': 'Please sign in: this shop does not offer guest shopping. Open the link your account gave you.',
    'unauthorized': 'Your session ended. Reload the page to start a new one.',
    'user-mismatch': 'Your session does not match this request. Reload the page.',
    'key-reused': 'That request was already used for something else. Please try again.',
    'commit-unknown': 'We could not confirm your request. Please try again: it will not be applied twice.',
    'no-leader': BUSY,
    'overloaded': BUSY,
    'unavailable': BUSY,
    'network': 'The shop cannot be reached. Check your connection and try again.',
    'challenge-required': 'Your browser could not confirm it is not a bot. Please try again.',
    'challenge-invalid': 'Your browser could not confirm it is not a bot. Please try again.',
    'challenge-replayed': 'Your browser could not confirm it is not a bot. Please try again.',
    'admission-required': 'Your turn in the shop ran out. You are back in line; the page lets you in by itself.',
    'admission-expired': 'Your turn in the shop ran out. You are back in line; the page lets you in by itself.',
    'admission-not-yours': 'Your place in line was taken under another session. You are back in line; the page lets you in by itself.',
    'blocked': 'This request looked automated and was refused. If you are a person, please wait a moment and try again.',
    'rate-limited': 'Too many requests at once. Please wait a moment and try again.',
  };
  const SHOW_DETAIL = new Set(['invalid-input', 'card-number-refused', 'amount-mismatch', 'malformed-json']);
  const SYMBOLS = { USD: '$', EUR: '€', GBP: '£', JPY: '¥' };

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    user: null,
    offsetMs: 0, // server clock minus this browser's clock
    ledgerIndex: -1,
    products: new Map(), // product_id -> product (GET /products shape)
    cards: new Map(), // product_id -> card element refs
    cart: null, // GET /cart shape
    order: null, // GET /orders shape (or the checkout answer)
    expiredSeen: new Set(), // hold ids whose expiry was already announced
    cartRefreshAt: 0,
    pollTimer: null,
    paying: false,
    admission: null, // the waiting room's admission token (null: not needed or not yet)
    admitted: false,
    queueGeneration: 0, // a newer queue entry stops the polling of an older one
    pow: null, // a promise of a solved challenge: { payload, expiresAt } or null (off)
  };

  // -- small helpers ------------------------------------------------------------------

  const now = () => Date.now() + state.offsetMs;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function noteServerTime(ms) {
    if (Number.isFinite(ms) && ms > 0) state.offsetMs = ms - Date.now();
  }

  function noteDateHeader(value) {
    // Date has whole seconds: only a larger disagreement is worth a correction.
    const ms = Date.parse(value || '');
    if (!Number.isFinite(ms)) return;
    const offset = ms + 500 - Date.now();
    if (Math.abs(offset - state.offsetMs) > 1500) state.offsetMs = offset;
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function duration(ms) {
    const total = Math.max(0, Math.ceil(ms / 1000));
    const d = Math.floor(total / 86400);
    const h = Math.floor((total % 86400) / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    if (d > 0) return `${d}d ${pad(h)}:${pad(m)}:${pad(s)}`;
    if (h > 0) return `${h}:${pad(m)}:${pad(s)}`;
    return `${pad(m)}:${pad(s)}`;
  }

  function money(amount, currency) {
    if (amount === null || amount === undefined) return '';
    const symbol = SYMBOLS[currency];
    return symbol ? `${symbol}${amount}` : `${amount} ${currency}`;
  }

  function productName(pid) {
    const p = state.products.get(pid);
    return p && p.name ? p.name : pid;
  }

  function setLive(mode, text) {
    const live = $('live');
    live.dataset.state = mode;
    $('live-text').textContent = text;
  }

  function say(tone, slug, text) {
    const box = $('message');
    box.dataset.tone = tone;
    box.dataset.kind = slug;
    box.textContent = text;
    box.hidden = false;
  }

  function sayProblem(problem, extra) {
    let text = MESSAGES[problem.slug];
    if (!text && SHOW_DETAIL.has(problem.slug)) text = problem.detail || problem.title;
    if (!text) text = problem.detail || problem.title || `Something went wrong (HTTP ${problem.status}).`;
    if (extra) text = `${text} ${extra}`;
    say(problem.status >= 500 || problem.status === 0 ? 'error' : 'warn', problem.slug, text);
  }

  // -- the API ------------------------------------------------------------------------

  function toProblem(status, data) {
    const type = data && typeof data.type === 'string' ? data.type : '';
    let slug = `http-${status}`;
    if (type.startsWith(PROBLEM_BASE)) slug = type.slice(PROBLEM_BASE.length);
    return {
      status,
      slug,
      title: data && typeof data.title === 'string' ? data.title : '',
      detail: data && typeof data.detail === 'string' ? data.detail : '',
      data: data || {},
    };
  }

  // One request; 503s and network failures are retried with the same Idempotency-Key,
  // which makes a retried write return the first outcome instead of acting twice.
  async function call(method, path, options = {}) {
    const headers = { Accept: 'application/json' };
    if (options.body !== undefined) headers['Content-Type'] = 'application/json';
    if (options.auth) headers.Authorization = `Bearer ${state.token}`;
    if (options.key) headers['Idempotency-Key'] = options.key;
    Object.assign(headers, options.headers || {});
    const init = {
      method,
      headers,
      cache: 'no-store',
      credentials: 'omit',
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    };
    for (let attempt = 0; ; attempt += 1) {
      let resp;
      try {
        resp = await fetch(path, init);
      } catch (err) {
        if (attempt < MAX_RETRIES) {
          await sleep(500 * 2 ** attempt);
          continue;
        }
        return { status: 0, ok: false, body: null, problem: { status: 0, slug: 'network', title: '', detail: String(err), data: {} } };
      }
      noteDateHeader(resp.headers.get('Date'));
      let data = null;
      try {
        data = await resp.json();
      } catch (err) {
        data = null;
      }
      const problem = resp.ok ? null : toProblem(resp.status, data);
      if (problem && resp.status === 503 && RETRYABLE.has(problem.slug) && attempt < MAX_RETRIES) {
        const wait = Number(resp.headers.get('Retry-After')) || 1;
        await sleep(Math.min(wait, 5) * 1000);
        continue;
      }
      return { status: resp.status, ok: resp.ok, body: data, problem };
    }
  }

  // A request as the shopper; a refused token (expired guest session) is replaced once.
  async function authed(method, path, options = {}) {
    if (!state.token && !(await ensureSession())) {
      return { status: 401, ok: false, body: null, problem: toProblem(401, { type: `${PROBLEM_BASE}unauthorized` }) };
    }
    const first = await call(method, path, { ...options, auth: true });
    if (first.status !== 401) return first;
    forgetSession();
    if (!(await ensureSession())) return first;
    const body = options.body && 'user_id' in options.body ? { ...options.body, user_id: state.user } : options.body;
    return call(method, path, { ...options, body, auth: true });
  }

  // -- the shopper's session ------------------------------------------------------------

  function forgetSession() {
    // The admission is the shopper's too: another shopper queues for their own.
    for (const key of [STORE.token, STORE.user, STORE.expires, STORE.cart, STORE.order,
      STORE.admission, STORE.admissionExpires]) {
      sessionStorage.removeItem(key);
    }
    state.token = null;
    state.user = null;
    state.admission = null;
  }

  function tokenFromFragment() {
    // A shop that signs shoppers in elsewhere can send them to /#token=<token>: the
    // fragment never reaches any server, and it is removed from the address bar at once.
    const match = /^#token=([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/.exec(window.location.hash);
    if (!match) return;
    window.history.replaceState(null, '', window.location.pathname + window.location.search);
    try {
      const part = match[1].split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const payload = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
      if (typeof payload.sub !== 'string' || !Number.isInteger(payload.exp)) return;
      if (payload.sub !== sessionStorage.getItem(STORE.user)) forgetSession();
      sessionStorage.setItem(STORE.token, match[1]);
      sessionStorage.setItem(STORE.user, payload.sub);
      sessionStorage.setItem(STORE.expires, String(payload.exp * 1000));
    } catch (err) {
      say('warn', 'bad-token', 'The sign-in link is not valid.');
    }
  }

  async function ensureSession() {
    const token = sessionStorage.getItem(STORE.token);
    const user = sessionStorage.getItem(STORE.user);
    const expires = Number(sessionStorage.getItem(STORE.expires));
    if (token && user && expires - now() > SESSION_MARGIN_MS) {
      state.token = token;
      state.user = user;
      showShopper();
      return true;
    }
    const answer = await call('POST', '/session/guest');
    if (!answer.ok || !answer.body || typeof answer.body.token !== 'string') {
      sayProblem(answer.problem || toProblem(answer.status, answer.body));
      setButtonsEnabled(false);
      return false;
    }
    forgetSession();
    noteServerTime(answer.body.now_ms);
    sessionStorage.setItem(STORE.token, answer.body.token);
    sessionStorage.setItem(STORE.user, answer.body.user_id);
    sessionStorage.setItem(STORE.expires, String(answer.body.expires_at_ms));
    state.token = answer.body.token;
    state.user = answer.body.user_id;
    showShopper();
    return true;
  }

  function showShopper() {
    $('shopper').textContent = state.user ? `Shopping as ${state.user}` : '';
  }

  function setButtonsEnabled(enabled) {
    document.body.dataset.session = enabled ? 'yes' : 'no';
    for (const refs of state.cards.values()) windowState(refs);
  }

  // -- products and live stock ----------------------------------------------------------

  function makeCard(pid) {
    const root = $('product-card').content.firstElementChild.cloneNode(true);
    root.dataset.product = pid;
    const refs = {
      pid,
      root,
      name: root.querySelector('.name'),
      price: root.querySelector('.price'),
      available: root.querySelector('.available'),
      of: root.querySelector('.of'),
      meter: root.querySelector('.meter'),
      window: root.querySelector('.window'),
      limit: root.querySelector('.limit'),
      qty: root.querySelector('.qty'),
      add: root.querySelector('.add'),
      qtyMax: 0,
    };
    refs.add.addEventListener('click', () => addToCart(pid, Number(refs.qty.value) || 1, refs.add));
    state.cards.set(pid, refs);
    return refs;
  }

  function fillCard(refs, p) {
    refs.name.textContent = p.name || p.product_id;
    refs.price.textContent = money(p.price, p.currency);
    const available = Number.isInteger(p.available_quantity) ? p.available_quantity : 0;
    const total = Number.isInteger(p.total_stock) ? p.total_stock : available;
    refs.available.textContent = String(available);
    refs.of.textContent = `of ${total} left`;
    refs.meter.max = Math.max(total, 1);
    refs.meter.value = available;
    refs.root.dataset.available = String(available);
    const limit = Number.isInteger(p.per_user_limit) ? p.per_user_limit : null;
    refs.limit.textContent = limit === null ? 'No limit per shopper' : `Limit ${limit} per shopper`;
    const qtyMax = Math.max(1, Math.min(limit === null ? MAX_QTY_CHOICES : limit, MAX_QTY_CHOICES));
    if (qtyMax !== refs.qtyMax) {
      const chosen = Number(refs.qty.value) || 1;
      refs.qty.replaceChildren();
      for (let q = 1; q <= qtyMax; q += 1) {
        const option = document.createElement('option');
        option.value = String(q);
        option.textContent = String(q);
        refs.qty.append(option);
      }
      refs.qty.value = String(Math.min(chosen, qtyMax));
      refs.qtyMax = qtyMax;
    }
    windowState(refs);
  }

  // The card's state from the sale window and stock, by the server's clock.
  function windowState(refs) {
    const p = state.products.get(refs.pid);
    if (!p) return;
    const t = now();
    let mode = 'open';
    let text = 'On sale now';
    if (Number.isInteger(p.opens_at_ms) && p.opens_at_ms > t) {
      mode = 'upcoming';
      text = `Opens in ${duration(p.opens_at_ms - t)}`;
    } else if (Number.isInteger(p.closes_at_ms) && p.closes_at_ms <= t) {
      mode = 'closed';
      text = 'Sale closed';
    } else if (p.available_quantity === 0) {
      mode = 'sold-out';
      text = 'Sold out — held units may come back';
    } else if (Number.isInteger(p.closes_at_ms)) {
      text = `On sale now · closes in ${duration(p.closes_at_ms - t)}`;
    }
    refs.root.dataset.state = mode;
    refs.window.textContent = text;
    const labels = { open: 'Add to cart', upcoming: 'Not open yet', closed: 'Sale closed', 'sold-out': 'Sold out' };
    refs.add.textContent = mode === 'open' && !state.admitted ? 'Waiting in line' : labels[mode];
    refs.add.disabled = mode !== 'open' || document.body.dataset.session === 'no' || !state.admitted;
  }

  function applyInventory(data) {
    if (!data || !Array.isArray(data.products)) return;
    const index = Number.isInteger(data.ledger_index) ? data.ledger_index : 0;
    if (index < state.ledgerIndex) return; // an older view than the one shown
    state.ledgerIndex = index;
    const seen = new Set();
    const list = $('products');
    for (const p of data.products) {
      if (!p || typeof p.product_id !== 'string') continue;
      seen.add(p.product_id);
      state.products.set(p.product_id, p);
      const refs = state.cards.get(p.product_id) || makeCard(p.product_id);
      fillCard(refs, p);
      if (!refs.root.isConnected) list.append(refs.root);
    }
    for (const [pid, refs] of state.cards) {
      if (!seen.has(pid)) {
        refs.root.remove();
        state.cards.delete(pid);
        state.products.delete(pid);
      }
    }
    const empty = $('products-empty');
    empty.hidden = state.cards.size > 0;
    empty.textContent = 'Nothing is on sale right now.';
  }

  async function loadProducts() {
    const answer = await call('GET', '/products');
    if (answer.ok) applyInventory(answer.body);
    return answer.ok;
  }

  function follow() {
    if (!('EventSource' in window)) {
      startPolling();
      return;
    }
    const stream = new EventSource('/events/inventory');
    stream.addEventListener('inventory', (event) => {
      let data = null;
      try {
        data = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      applyInventory(data);
      setLive('live', 'live');
    });
    stream.addEventListener('open', () => setLive('live', 'live'));
    stream.addEventListener('error', () => {
      if (stream.readyState === EventSource.CLOSED) {
        startPolling(); // the gateway refused the stream (busy): poll instead
      } else {
        setLive('reconnecting', 'reconnecting…');
      }
    });
  }

  function startPolling() {
    if (state.pollTimer !== null) return;
    setLive('polling', 'live (polling)');
    state.pollTimer = setInterval(async () => {
      const ok = await loadProducts();
      setLive(ok ? 'polling' : 'offline', ok ? 'live (polling)' : 'offline');
    }, POLL_MS);
  }

  // -- the waiting room ---------------------------------------------------------------------
  // At a busy opening the shop lets shoppers in in the order they arrived: the page takes
  // a ticket, shows its place in line and lets the shopper in when the queue does. Every
  // write then carries the admission token (X-Admission).

  function admitted(token, expiresAtMs) {
    state.admission = token;
    state.admitted = true;
    if (token) {
      sessionStorage.setItem(STORE.admission, token);
      sessionStorage.setItem(STORE.admissionExpires, String(expiresAtMs || 0));
    }
    $('queue').hidden = true;
    document.body.dataset.queue = 'admitted';
    for (const refs of state.cards.values()) windowState(refs);
    preparePow();
  }

  function showPlace(body) {
    $('queue').hidden = false;
    document.body.dataset.queue = 'waiting';
    $('queue-position').textContent = String(body.position);
    const wait = Number(body.estimated_wait_s) || 0;
    $('queue-wait').textContent = wait >= 1 ? `About ${duration(wait * 1000)} to wait.` : 'Almost there…';
  }

  async function enterQueue() {
    state.admitted = false;
    state.admission = null;
    sessionStorage.removeItem(STORE.admission);
    const generation = ++state.queueGeneration;
    for (const refs of state.cards.values()) windowState(refs);
    for (;;) {
      // The place in line is the shopper's: the ticket is taken under the bearer token.
      const answer = await authed('POST', '/queue');
      if (generation !== state.queueGeneration) return;
      if (answer.ok) {
        await followTicket(answer.body, generation);
        return;
      }
      if (answer.problem.slug === 'queue-not-open') {
        $('queue').hidden = false;
        document.body.dataset.queue = 'not-open';
        $('queue-position').textContent = '—';
        const opensAt = answer.body.queue_opens_at_ms;
        $('queue-wait').textContent = `The line opens in ${duration(opensAt - now())}.`;
        await sleep(Math.max(1000, Math.min(opensAt - now(), 60_000)));
      } else {
        sayProblem(answer.problem);
        await sleep(QUEUE_POLL_MAX_MS);
      }
      if (generation !== state.queueGeneration) return;
    }
  }

  async function followTicket(first, generation) {
    let body = first;
    while (!body.admitted) {
      showPlace(body);
      const wait = (Number(body.estimated_wait_s) || 0) * 500; // half the estimate
      await sleep(Math.max(QUEUE_POLL_MIN_MS, Math.min(wait, QUEUE_POLL_MAX_MS)));
      if (generation !== state.queueGeneration) return;
      const answer = await authed('GET', `/queue/${encodeURIComponent(body.ticket)}`);
      if (generation !== state.queueGeneration) return;
      if (answer.ok) {
        body = answer.body;
      } else if (answer.status === 0 || answer.status === 429 || answer.status >= 500) {
        continue; // the line is still there: ask again, keeping the place
      } else {
        enterQueue(); // the ticket ran out or is refused: a new one
        return;
      }
    }
    admitted(body.admission, body.admission_expires_at_ms);
  }

  function restoreAdmission() {
    const token = sessionStorage.getItem(STORE.admission);
    const expires = Number(sessionStorage.getItem(STORE.admissionExpires));
    if (token && expires - now() > SESSION_MARGIN_MS) {
      admitted(token, expires);
      return true;
    }
    return false;
  }

  function writeHeaders(extra) {
    return state.admission ? { 'X-Admission': state.admission, ...(extra || {}) } : { ...(extra || {}) };
  }

  // -- proof of work ---------------------------------------------------------------------------
  // Holds need a solved ALTCHA challenge (X-Altcha): find n with SHA-256(salt + n) equal
  // to the challenge. The page keeps one solution ready, solved in small batches of
  // WebCrypto hashes so it stays responsive, and uses each solution once.

  function hexBytes(hex) {
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i += 1) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
    return out;
  }

  function sameBytes(buffer, expected) {
    const got = new Uint8Array(buffer);
    if (got.length !== expected.length) return false;
    for (let i = 0; i < got.length; i += 1) if (got[i] !== expected[i]) return false;
    return true;
  }

  async function solvePow(challenge) {
    const target = hexBytes(challenge.challenge);
    const encoder = new TextEncoder();
    const max = Number(challenge.maxnumber) || 0;
    for (let start = 0; start <= max; start += POW_BATCH) {
      const end = Math.min(start + POW_BATCH - 1, max);
      const batch = [];
      for (let n = start; n <= end; n += 1) {
        batch.push(crypto.subtle.digest('SHA-256', encoder.encode(challenge.salt + n)));
      }
      const digests = await Promise.all(batch);
      for (let i = 0; i < digests.length; i += 1) {
        if (sameBytes(digests[i], target)) return start + i;
      }
    }
    return null;
  }

  async function fetchPow() {
    const answer = await call('GET', '/challenge');
    if (answer.status === 404) return null; // proof of work is off on this shop
    if (!answer.ok) throw new Error(`challenge: HTTP ${answer.status}`);
    const c = answer.body;
    const number = await solvePow(c);
    if (number === null) throw new Error('challenge without a solution');
    const payload = btoa(JSON.stringify({
      algorithm: c.algorithm, challenge: c.challenge, number, salt: c.salt, signature: c.signature,
    }));
    return { payload, expiresAt: Number(c.expires_at_ms) || 0, useAfter: Number(c.use_after_ms) || 0 };
  }

  function preparePow() {
    const pending = fetchPow();
    pending.catch(() => {}); // a failure is seen (and retried) when the solution is taken
    state.pow = pending;
  }

  // The X-Altcha header for one hold ({} when proof of work is off); the next solution
  // starts at once, so a shopper's next click seldom waits.
  async function takePow() {
    if (!state.pow) preparePow();
    let solved;
    try {
      solved = await state.pow;
    } catch (err) {
      solved = undefined;
    }
    if (solved === null) return {};
    if (!solved || solved.expiresAt - now() < POW_MARGIN_MS) {
      preparePow();
      solved = await state.pow;
      if (solved === null) return {};
    }
    preparePow();
    // A write sooner than this after the challenge looks scripted: a quick second click
    // waits the rest of it (the solution is usually older by then).
    const early = solved.useAfter - now();
    if (early > 0) await sleep(early + 100);
    return { 'X-Altcha': solved.payload };
  }

  // -- cart -----------------------------------------------------------------------------

  const CHALLENGE_SLUGS = new Set(['challenge-required', 'challenge-invalid', 'challenge-replayed']);
  const ADMISSION_SLUGS = new Set(['admission-required', 'admission-expired', 'admission-not-yours']);

  // A write refused for want of an admission sends the shopper back in line.
  function checkAdmission(answer) {
    if (!answer.ok && answer.problem && ADMISSION_SLUGS.has(answer.problem.slug)) {
      sayProblem(answer.problem);
      enterQueue();
      return false;
    }
    return true;
  }

  async function addToCart(pid, quantity, button) {
    button.disabled = true;
    try {
      const key = newKey();
      const hold = async () => authed('POST', '/add-to-cart', {
        body: { user_id: state.user, product_id: pid, quantity },
        key,
        headers: writeHeaders(await takePow()),
      });
      let answer;
      try {
        answer = await hold();
        // A solution refused (expired while the page slept, or spent on a retried
        // session): one more try with a fresh one, under the same Idempotency-Key.
        if (!answer.ok && CHALLENGE_SLUGS.has(answer.problem.slug)) answer = await hold();
      } catch (err) {
        answer = { ok: false, status: 0, body: null, problem: toProblem(0, { type: `${PROBLEM_BASE}network` }) };
      }
      if (!checkAdmission(answer)) return;
      if (answer.ok) {
        sessionStorage.setItem(STORE.cart, answer.body.cart_id);
        const left = duration(answer.body.expires_at_ms - now());
        say('ok', 'held', `${quantity} × ${productName(pid)} held for you for ${left}. Check out before the timer runs out.`);
        await refreshCart();
      } else if (answer.problem.slug === 'not-open') {
        const p = state.products.get(pid);
        const extra = p && Number.isInteger(p.opens_at_ms) ? `Opens in ${duration(p.opens_at_ms - now())}.` : '';
        sayProblem(answer.problem, extra);
      } else {
        sayProblem(answer.problem);
      }
    } finally {
      const refs = state.cards.get(pid);
      if (refs) windowState(refs);
    }
  }

  async function release(hold) {
    const cartId = sessionStorage.getItem(STORE.cart);
    if (!cartId) return;
    const path = `/cart/${encodeURIComponent(cartId)}/items/${encodeURIComponent(hold.hold_id)}`;
    const answer = await authed('DELETE', path, { key: newKey(), headers: writeHeaders() });
    if (!checkAdmission(answer)) return;
    if (answer.ok) say('info', 'released', `${productName(hold.product_id)} is back on sale.`);
    else sayProblem(answer.problem);
    await refreshCart();
  }

  async function refreshCart() {
    state.cartRefreshAt = Date.now();
    const cartId = sessionStorage.getItem(STORE.cart);
    if (!cartId || !state.token) {
      state.cart = null;
      renderCart();
      return;
    }
    const answer = await authed('GET', `/cart/${encodeURIComponent(cartId)}`);
    if (answer.ok) {
      state.cart = answer.body;
      if (state.cart.status !== 'open') sessionStorage.removeItem(STORE.cart);
    } else if (answer.status === 404) {
      sessionStorage.removeItem(STORE.cart);
      state.cart = null;
    }
    renderCart();
  }

  function visibleHolds() {
    if (!state.cart || state.cart.status !== 'open' || !Array.isArray(state.cart.items)) return [];
    return state.cart.items.filter((h) => h.status === 'active' || h.status === 'expired');
  }

  function isLive(hold) {
    return hold.status === 'active' && Number.isInteger(hold.expires_at_ms) && hold.expires_at_ms > now();
  }

  function renderCart() {
    const list = $('cart-items');
    list.replaceChildren();
    const holds = visibleHolds();
    for (const hold of holds) {
      const item = $('cart-item').content.firstElementChild.cloneNode(true);
      item.dataset.hold = hold.hold_id;
      item.dataset.product = hold.product_id;
      item.querySelector('.what').textContent = `${hold.quantity} × ${productName(hold.product_id)}`;
      const button = item.querySelector('.release');
      button.addEventListener('click', () => {
        button.disabled = true;
        release(hold);
      });
      list.append(item);
    }
    $('cart-empty').hidden = holds.length > 0;
    tickCart();
  }

  function tickCart() {
    const holds = visibleHolds();
    let live = 0;
    let expiredNow = false;
    for (const item of $('cart-items').children) {
      const hold = holds.find((h) => h.hold_id === item.dataset.hold);
      if (!hold) continue;
      const timer = item.querySelector('.timer');
      if (isLive(hold)) {
        live += 1;
        item.dataset.status = 'active';
        timer.textContent = `held for ${duration(hold.expires_at_ms - now())}`;
      } else {
        item.dataset.status = 'expired';
        timer.textContent = 'expired — back on sale';
        item.querySelector('.release').hidden = true;
        if (!state.expiredSeen.has(hold.hold_id)) {
          state.expiredSeen.add(hold.hold_id);
          expiredNow = true;
        }
      }
    }
    if (expiredNow) {
      say('warn', 'hold-expired', MESSAGES['hold-expired']);
      if (Date.now() - state.cartRefreshAt > 2000) refreshCart();
    }
    const orderOpen = state.order && state.order.payment_status === 'pending';
    $('checkout-form').hidden = live === 0 || Boolean(orderOpen);
  }

  // -- checkout and payment ---------------------------------------------------------------

  function field(id) {
    return $(id).value.trim();
  }

  async function checkout(event) {
    event.preventDefault();
    const cartId = sessionStorage.getItem(STORE.cart);
    if (!cartId) return;
    const address = {
      address_line1: field('ship-line1'),
      city: field('ship-city'),
      postal_code: field('ship-postal'),
      country: field('ship-country').toUpperCase(),
    };
    for (const [name, id] of [['name', 'ship-name'], ['address_line2', 'ship-line2'], ['region', 'ship-region']]) {
      if (field(id)) address[name] = field(id);
    }
    const missing = Object.entries(address).filter(([, v]) => !v).map(([k]) => k.replace(/_/g, ' '));
    if (missing.length) {
      say('warn', 'invalid-input', `Please fill in: ${missing.join(', ')}.`);
      return;
    }
    const body = { user_id: state.user, cart_id: cartId, payment_method: PAYMENT_METHOD, shipping_address: address };
    if (field('ship-email')) body.email = field('ship-email');
    const button = $('checkout');
    button.disabled = true;
    try {
      const answer = await authed('POST', '/checkout', { body, key: newKey(), headers: writeHeaders() });
      if (!checkAdmission(answer)) return;
      if (answer.ok) {
        sessionStorage.setItem(STORE.order, answer.body.order_id);
        sessionStorage.removeItem(STORE.cart);
        state.cart = null;
        state.order = answer.body;
        renderCart();
        renderOrder();
        say('ok', 'ordered', `Order placed: ${money(answer.body.amount, answer.body.currency)}. Pay within ${duration(answer.body.pay_by_ms - now())} to keep your units.`);
      } else {
        sayProblem(answer.problem);
        if (['hold-expired', 'empty-cart', 'sold-out', 'unknown-cart'].includes(answer.problem.slug)) await refreshCart();
      }
    } finally {
      button.disabled = false;
    }
  }

  function renderOrder() {
    const order = state.order;
    const box = $('order');
    if (!order) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.dataset.status = order.payment_status;
    $('order-id').textContent = order.order_id;
    $('order-amount').textContent = money(order.amount, order.currency);
    const status = { pending: 'waiting for payment', completed: 'paid', failed: 'not paid' };
    let text = status[order.payment_status] || String(order.payment_status);
    if (order.payment_status === 'completed' && order.transaction_id) text = `paid (transaction ${order.transaction_id})`;
    if (order.payment_status === 'failed' && order.failure) text = `not paid (${order.failure})`;
    $('order-status').textContent = text;
    const pending = order.payment_status === 'pending';
    $('pay').hidden = !pending;
    $('pay').disabled = state.paying;
    $('new-order').hidden = pending;
    $('order-deadline-label').hidden = !pending;
    $('order-deadline').hidden = !pending;
    tickOrder();
  }

  function tickOrder() {
    const order = state.order;
    if (!order || order.payment_status !== 'pending' || !Number.isInteger(order.pay_by_ms)) return;
    const left = order.pay_by_ms - now();
    $('order-deadline').textContent = left > 0 ? duration(left) : 'expired';
    if (left <= 0 && !state.paying && !state.expiredSeen.has(order.order_id)) {
      state.expiredSeen.add(order.order_id);
      say('warn', 'hold-expired', 'Your order was not paid in time: its units went back on sale.');
      refreshOrder();
    }
  }

  async function refreshOrder() {
    const orderId = sessionStorage.getItem(STORE.order);
    if (!orderId || !state.token) return null;
    const answer = await authed('GET', `/orders/${encodeURIComponent(orderId)}`);
    if (answer.ok) {
      state.order = answer.body;
    } else if (answer.status === 404) {
      sessionStorage.removeItem(STORE.order);
      state.order = null;
    }
    renderOrder();
    return state.order;
  }

  async function pay() {
    const order = state.order;
    if (!order || state.paying) return;
    state.paying = true;
    renderOrder();
    say('info', 'paying', 'Paying…');
    try {
      const answer = await authed('POST', '/payment', {
        body: { order_id: order.order_id, payment_method: PAYMENT_METHOD, amount: order.amount },
        key: newKey(),
        headers: writeHeaders(),
      });
      if (!checkAdmission(answer)) return;
      if (answer.ok && answer.status === 200) {
        state.order = { ...order, payment_status: 'completed', transaction_id: answer.body.transaction_id };
        say('ok', 'paid', `Paid ${money(answer.body.amount, answer.body.currency)}. Thank you! Your order ${order.order_id} is confirmed.`);
      } else if (answer.ok) {
        say('info', 'payment-pending', 'Your payment is being confirmed…');
        await awaitPayment(order.order_id);
      } else if (answer.status === 404 && answer.problem.slug === 'not-found') {
        say('error', 'payment-missing', 'Payment is not available on this shop yet.');
      } else {
        sayProblem(answer.problem);
        if (answer.problem.slug === 'hold-expired' || answer.problem.slug === 'not-pending') await refreshOrder();
      }
    } finally {
      state.paying = false;
      renderOrder();
    }
  }

  async function awaitPayment(orderId) {
    for (let i = 0; i < ORDER_POLL_LIMIT; i += 1) {
      await sleep(ORDER_POLL_MS);
      const order = await refreshOrder();
      if (!order || order.order_id !== orderId) return;
      if (order.payment_status === 'completed') {
        say('ok', 'paid', `Paid ${money(order.amount, order.currency)}. Thank you! Your order ${orderId} is confirmed.`);
        return;
      }
      if (order.payment_status === 'failed') {
        say('warn', 'payment-failed', 'Your payment did not go through and the order was cancelled.');
        return;
      }
    }
    say('info', 'payment-pending', 'Your payment is still being confirmed. This page will show the result when you reload it.');
  }

  function shopAgain() {
    sessionStorage.removeItem(STORE.order);
    state.order = null;
    renderOrder();
    renderCart();
    $('message').hidden = true;
  }

  // -- start ----------------------------------------------------------------------------

  function tick() {
    for (const refs of state.cards.values()) windowState(refs);
    tickCart();
    tickOrder();
  }

  async function start() {
    $('checkout-form').addEventListener('submit', checkout);
    $('pay').addEventListener('click', pay);
    $('new-order').addEventListener('click', shopAgain);
    tokenFromFragment();
    setInterval(tick, TICK_MS);
    follow();
    await loadProducts();
    if (await ensureSession()) {
      if (!restoreAdmission()) enterQueue();
      await Promise.all([refreshCart(), refreshOrder()]);
    }
    document.body.dataset.ready = 'true';
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
