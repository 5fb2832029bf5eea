// Live push over /v1/dashboard/ws, with REST polling while the socket is down.
//
// Modes: "connecting" (first attempt), "live" (subscribed), "polling" (socket
// down, REST answers), "offline" (neither answers). The socket reconnects
// after a random delay up to min(30 s, 0.1 s × 2^attempt) and resumes from
// the last cursor; polling pauses while the tab is hidden and catches up as
// soon as it is shown again.

const POLL_MS = 5000;
const SUBSCRIBE_TIMEOUT_MS = 8000;

export function createConnection({ store, api, getToken, getFilters, onMode, onAuthError }) {
  let ws = null;
  let live = false;
  let attempt = 0;
  let reconnectTimer = null;
  let retryAt = 0;
  let polling = false;
  let pollTimer = null;
  let pollSeq = 0; // only the newest poll's answer is applied (filters may change while one is in flight)
  let stopped = false;
  // The filters the held cursor belongs to: resuming under other filters would miss their jobs.
  let cursorKey = null;
  let sentKey = null;

  const filtersKey = () => JSON.stringify(getFilters());
  const report = (mode, detail = {}) => onMode(mode, { retryAt, ...detail });

  function socketUrl() {
    const url = new URL("/v1/dashboard/ws", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", getToken());
    return url;
  }

  function subscribe(socket, resume) {
    const message = { type: "subscribe", filters: getFilters() };
    sentKey = filtersKey();
    if (resume && store.state.cursor && cursorKey === sentKey) message.cursor = store.state.cursor;
    socket.send(JSON.stringify(message));
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (stopped || ws) return;
    const socket = new WebSocket(socketUrl());
    ws = socket;
    const giveUp = setTimeout(() => socket.close(), SUBSCRIBE_TIMEOUT_MS);
    socket.addEventListener("open", () => subscribe(socket, true));
    socket.addEventListener("message", (event) => {
      if (socket !== ws) return;
      const msg = JSON.parse(event.data);
      if (msg.type === "snapshot" || msg.type === "resumed") {
        clearTimeout(giveUp);
        attempt = 0;
        cursorKey = sentKey;
        if (!live) {
          live = true;
          stopPolling();
          report("live");
        }
      }
      store.applyPush(msg);
    });
    socket.addEventListener("close", () => {
      clearTimeout(giveUp);
      if (socket !== ws) return;
      ws = null;
      live = false;
      if (!stopped) lost();
    });
  }

  function lost() {
    attempt += 1;
    const delay = Math.random() * Math.min(30_000, 100 * 2 ** attempt);
    retryAt = Date.now() + delay;
    reconnectTimer = setTimeout(connect, delay);
    startPolling();
  }

  function startPolling() {
    if (polling) return;
    polling = true;
    poll();
  }

  function stopPolling() {
    polling = false;
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  async function poll() {
    clearTimeout(pollTimer);
    pollTimer = null;
    if (!polling || document.hidden) return; // the visibility handler polls again when shown
    const seq = ++pollSeq;
    try {
      const body = await api.progress(restFilters());
      if (!polling || seq !== pollSeq) return; // the socket came back meanwhile, or a newer poll was sent
      store.applyProgress(body);
      report("polling");
    } catch (err) {
      if (err.status === 401) {
        stop();
        onAuthError(err);
        return;
      }
      if (polling && seq === pollSeq) report("offline", { message: err.message });
    }
    if (polling && !pollTimer) pollTimer = setTimeout(poll, POLL_MS);
  }

  function restFilters() {
    const f = getFilters();
    return { window: f.window, limit: f.limit, kind: f.kind, trigger_source: f.trigger_source, user_id: f.user_id };
  }

  function stop() {
    stopped = true;
    stopPolling();
    clearTimeout(reconnectTimer);
    if (ws) ws.close(1000);
    ws = null;
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden || stopped) return;
    if (polling) poll();
    if (reconnectTimer) connect(); // don't wait out a long backoff once someone is looking
  });
  window.addEventListener("online", () => {
    if (!stopped && reconnectTimer) connect();
  });

  return {
    start() {
      stopped = false;
      report("connecting");
      connect();
    },
    stop,
    /** Filters changed or the operator asked for fresh data: a new snapshot (or poll). */
    refresh() {
      if (live && ws) subscribe(ws, false);
      else if (polling) poll();
    },
  };
}
