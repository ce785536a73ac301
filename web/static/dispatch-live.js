// The dispatch websocket (docs/websockets.md): reconnects with backoff, resumes from
// the last event id it saw, and drops events it already has (a resume replays a short
// overlap on purpose).

const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 15000;
const PING_EVERY_MS = 20000;
const SILENT_LIMIT_MS = 60000; // no message at all for this long: the link is dead
const SEEN_IDS_KEPT = 20000;
const RECENT_KEPT = 50;

export class LiveStream {
  constructor({ token, onMessage, onState }) {
    this.token = token;
    this.onMessage = onMessage;
    this.onState = onState;
    this.ws = null;
    this.attempts = 0;
    this.lastEventId = null;
    this.filter = null;
    this.seen = new Set();
    this.seenOrder = [];
    this.recent = [];
    this.stats = { connects: 0, messages: 0, duplicates: 0, reconnects: 0, lastClose: null };
    this.state = "connecting";
    this._timer = null;
    this._ping = null;
    this._lastMessageAt = 0;
  }

  connect() {
    clearTimeout(this._timer);
    const params = new URLSearchParams({ access_token: this.token });
    if (this.lastEventId) params.set("since", this.lastEventId);
    if (this.filter && this.filter.bbox) params.set("bbox", this.filter.bbox.join(","));
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws/dispatch?${params}`);
    this.ws = ws;
    this._setState(this.attempts ? "reconnecting" : "connecting");
    ws.onopen = () => {
      this.attempts = 0;
      this.stats.connects++;
      this._lastMessageAt = Date.now();
      this._setState("live");
      clearInterval(this._ping);
      this._ping = setInterval(() => this._keepAlive(), PING_EVERY_MS);
    };
    ws.onmessage = (message) => {
      this._lastMessageAt = Date.now();
      this.stats.messages++;
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return; // the protocol is JSON text frames; anything else is not for us
      }
      this._receive(data);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      clearInterval(this._ping);
      this.stats.lastClose = { code: event.code, reason: event.reason };
      this._retry(event.code === 4000 ? "too slow: reconnecting" : "reconnecting");
    };
  }

  _retry(state) {
    this.attempts++;
    this.stats.reconnects++;
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (this.attempts - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // jitter: not all at once
    this._setState(state, delay);
    this._timer = setTimeout(() => this.connect(), delay);
  }

  _keepAlive() {
    if (Date.now() - this._lastMessageAt > SILENT_LIMIT_MS) {
      this.ws.close(); // onclose reconnects
      return;
    }
    this.send({ type: "ping" });
  }

  _receive(data) {
    // the last few messages, for whoever debugs a deployment from the console
    this.recent.push(data.type === "event" ? `event ${data.event && data.event.id}` : data.type);
    if (this.recent.length > RECENT_KEPT) this.recent.shift();
    if (data.type === "event") {
      const id = data.event && data.event.id;
      // Events come in stored order, a replay's overlap included: the last one received
      // is where to resume, even when it was already had (e.g. from a snapshot).
      this.lastEventId = id;
      if (this.seen.has(id)) {
        this.stats.duplicates++;
        return;
      }
      this._remember(id);
    } else if (data.type === "snapshot") {
      for (const alert of data.alerts || []) this._remember(alert.id);
      const alerts = data.alerts || [];
      if (!this.lastEventId && alerts.length) this.lastEventId = alerts[alerts.length - 1].id;
    }
    this.onMessage(data);
  }

  _remember(id) {
    if (this.seen.has(id)) return;
    this.seen.add(id);
    this.seenOrder.push(id);
    if (this.seenOrder.length > SEEN_IDS_KEPT) {
      this.seen.delete(this.seenOrder.shift());
    }
  }

  // For good: the token was refused.
  stop() {
    clearTimeout(this._timer);
    clearInterval(this._ping);
    const ws = this.ws;
    this.ws = null; // its close event is then ignored
    if (ws) ws.close();
    this._setState("stopped");
  }

  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  // bbox [south, west, north, east] or null for everything.
  setFilter(filter) {
    this.filter = filter;
    return this.send({ type: "filter", bbox: filter.bbox, devices: null, kinds: null });
  }

  _setState(state, retryInMs) {
    this.state = state;
    this.onState(state, retryInMs);
  }
}
