// Helpers shared by the install page and the app page, both of which run inside the
// Bitrix24 frame and talk to the portal through the b24jssdk UMD global `B24Js`.

// The SDK waits forever for the portal's answer to getInitData (a wrong parent origin is
// silently dropped by the browser), so the page gives up on its own after this long.
export const INIT_TIMEOUT_MS = 10000;

const BINDING_EXISTS_TEXT = 'handler already binded';

/** Return the page's settings, rendered by the backend as JSON (never as script). */
export function readPageConfig() {
  const element = document.getElementById('page-config');
  return JSON.parse(element.textContent);
}

/** Record the page's state on <body data-state>, where CSS and the browser tests read it. */
export function setState(state) {
  document.body.dataset.state = state;
}

/** Show a one-line message in the page's status banner; kind is "info", "ok" or "error". */
export function showStatus(text, kind = 'info') {
  const banner = document.getElementById('status');
  banner.textContent = text;
  banner.dataset.kind = kind;
}

/**
 * Tell whether this window is a Bitrix24 app frame.
 *
 * The SDK finds its portal only through window.name ("DOMAIN|PROTOCOL|APP_SID", set by the
 * portal on the iframe), and talks to `parent`; a top-level window has neither.
 */
export function isInsidePortalFrame() {
  if (window.top === window.self) {
    return false;
  }
  const [domain, , appSid] = window.name.split('|');
  return Boolean(domain) && Boolean(appSid);
}

/** Initialize the SDK's frame connection, failing after `timeoutMs` instead of hanging. */
export function initializeFrame(timeoutMs = INIT_TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => {
      reject(new Error(
        `Could not reach the portal: no answer within ${Math.round(timeoutMs / 1000)} s.`
      ));
    }, timeoutMs);
  });
  return Promise.race([window.B24Js.initializeB24Frame(), timeout])
    .finally(() => clearTimeout(timer));
}

/** Return a readable one-line description of an SDK, network or plain error. */
export function describeError(error) {
  if (error && typeof error === 'object') {
    const message = error.message || String(error);
    // SDK errors carry a string code; a DOMException's numeric legacy code means nothing.
    const code = typeof error.code === 'string' ? error.code : '';
    return code && !message.includes(code) ? `${code}: ${message}` : message;
  }
  return String(error);
}

/**
 * Give the SDK an in-memory localStorage when the browser denies the real one.
 *
 * Browsers that block third-party storage (private windows, strict privacy settings) refuse
 * localStorage to an app framed by a portal on another site, and the SDK's Pull client then
 * throws on start. It keeps only a config cache and a short-lived session there, which a page
 * can live without.
 *
 * @returns {boolean} true when the real localStorage works.
 */
export function ensureLocalStorage() {
  try {
    window.localStorage.getItem('b24app-probe');
    return true;
  } catch {
    const items = new Map();
    const memoryStorage = {
      get length() {
        return items.size;
      },
      key: (index) => Array.from(items.keys())[index] ?? null,
      getItem: (key) => items.get(String(key)) ?? null,
      setItem: (key, value) => {
        items.set(String(key), String(value));
      },
      removeItem: (key) => {
        items.delete(String(key));
      },
      clear: () => items.clear(),
    };
    Object.defineProperty(window, 'localStorage', { value: memoryStorage, configurable: true });
    return false;
  }
}

/**
 * Call a REST method of the portal and return its `result`.
 *
 * The SDK throws for HTTP errors but resolves with `isSuccess = false` for an error answered
 * with HTTP 200; both become a thrown Error here, so callers have one failure path.
 *
 * @throws {Error} carrying the portal's error text.
 */
export async function callPortal(b24, method, params) {
  const response = await b24.actions.v2.call.make({ method, params });
  if (!response.isSuccess) {
    throw new Error(`${method} failed: ${response.getErrorMessages().join('; ')}`);
  }
  return response.getData().result;
}

/** Tell whether an event.bind error only means the same handler is bound already. */
export function isAlreadyBound(error) {
  return describeError(error).toLowerCase().includes(BINDING_EXISTS_TEXT);
}

/** Create the page's console logger; debug output only when the backend asks for it. */
export function createLogger(channel, config) {
  return window.B24Js.LoggerFactory.createForBrowser(channel, config.debug === true);
}

/**
 * Show that the page was opened outside a portal, and stop there.
 *
 * @returns {boolean} true when the page is outside a portal frame.
 */
export function stopIfOutsidePortal() {
  if (isInsidePortalFrame()) {
    return false;
  }
  setState('outside');
  showStatus(
    'This page works only inside a Bitrix24 portal: open the app from the portal.',
    'error'
  );
  return true;
}
