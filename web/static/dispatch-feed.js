// The alert feed: geofence, delivery and device events, newest first, each with an
// Acknowledge button; acknowledged alerts stay, greyed, with who acknowledged them.

const GEOFENCE_KINDS = new Set(["enter", "exit", "dwell", "cross", "altitude_breach"]);
// Good news about an earlier alert rather than an alert of its own.
const QUIET_KINDS = new Set(["online"]);
const ACK_RETRY_MS = 10000;
const DAY_MS = 24 * 3600 * 1000;
const SNAPSHOT_ALERTS_MAX = 500; // docs/websockets.md: the snapshot holds at most 500
const VERBS = {
  enter: "entered",
  exit: "left",
  dwell: "dwelling in",
  cross: "crossed",
  altitude_breach: "altitude breach in",
};

export function category(event) {
  if (GEOFENCE_KINDS.has(event.kind)) return "geofence";
  if (event.delivery_id) return "delivery";
  return "device";
}

function timeText(ms) {
  const date = new Date(ms);
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour12: false })
    : date.toLocaleString([], { hour12: false });
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

export class AlertFeed {
  constructor({ list, empty, more, unacked, filter, fenceName, onAck, onSelect, max = 500 }) {
    this.list = list;
    this.emptyNote = empty;
    this.moreNote = more;
    this.unackedBadge = unacked;
    this.fenceName = fenceName;
    this.onAck = onAck;
    this.onSelect = onSelect;
    this.max = max;
    this.items = new Map(); // id -> {event, tsMs, acked, node}
    this.order = []; // ids, newest first
    this.dropped = 0;
    this.filter = "all";
    filter.addEventListener("change", () => {
      this.filter = filter.value;
      for (const item of this.items.values()) this._applyFilter(item);
    });
  }

  // Adds an event once; returns whether it is shown.
  add(event) {
    if (this.items.has(event.id) || QUIET_KINDS.has(event.kind)) return false;
    const tsMs = Date.parse(event.ts);
    const item = { event, tsMs, acked: null, pending: false, node: null };
    const at = this._position(tsMs, event.id);
    if (at >= this.max) {
      this.dropped++; // older than everything kept: counted, not shown
      this._refresh();
      return false;
    }
    this.order.splice(at, 0, event.id);
    this.items.set(event.id, item);
    item.node = this._render(item);
    const next = this.order[at + 1];
    this.list.insertBefore(item.node, next ? this.items.get(next).node : null);
    if (event.acked_at) this.markAcked({ event_id: event.id, acked_by: event.acked_by,
      acked_at: event.acked_at, note: event.ack_note });
    while (this.order.length > this.max) {
      const oldest = this.order.pop();
      this.items.get(oldest).node.remove();
      this.items.delete(oldest);
      this.dropped++;
    }
    this._refresh();
    return true;
  }

  // Newest first; equal times by id, so the order is the same in every browser.
  _position(tsMs, id) {
    let lo = 0, hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const other = this.items.get(this.order[mid]);
      const before = other.tsMs > tsMs || (other.tsMs === tsMs && other.event.id > id);
      if (before) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  markAcked(ack) {
    const item = this.items.get(ack.event_id);
    if (!item) return false;
    item.acked = { by: ack.acked_by, at: ack.acked_at, note: ack.note };
    item.pending = false;
    clearTimeout(item.retry);
    item.node.classList.add("acked");
    const actions = item.node.querySelector(".actions");
    actions.replaceChildren(element("span", "acked-by",
      `acknowledged${ack.acked_by ? ` by ${ack.acked_by}` : ""}` +
      (ack.acked_at ? ` at ${timeText(Date.parse(ack.acked_at))}` : "") +
      (ack.note ? `: ${ack.note}` : "")));
    this._refresh();
    return true;
  }

  // The server refused an acknowledgement (e.g. a viewer token): let it be retried.
  ackFailed() {
    for (const item of this.items.values()) {
      if (item.pending) this._resetButton(item);
    }
  }

  // A snapshot lists every unacknowledged alert of the last 24 h (up to 500): an alert
  // shown here as open but missing from a complete list was acknowledged elsewhere
  // while this page was disconnected.
  reconcile(alerts) {
    const open = new Set(alerts.map((a) => a.id));
    if (alerts.length >= SNAPSHOT_ALERTS_MAX) return;
    const since = Date.now() - DAY_MS;
    for (const item of this.items.values()) {
      if (!item.acked && !open.has(item.event.id) && item.tsMs > since) {
        this.markAcked({ event_id: item.event.id, acked_by: null, acked_at: null,
          note: "while this page was disconnected" });
      }
    }
  }

  get unackedCount() {
    let n = 0;
    for (const item of this.items.values()) if (!item.acked) n++;
    return n;
  }

  snapshot() {
    return this.order.map((id) => {
      const item = this.items.get(id);
      return { id, kind: item.event.kind, device_id: item.event.device_id,
        fence_id: item.event.fence_id, acked: Boolean(item.acked) };
    });
  }

  _render(item) {
    const event = item.event;
    const cat = category(event);
    const li = element("li", `alert cat-${cat}`);
    li.dataset.eventId = event.id;
    li.dataset.kind = event.kind;
    const head = element("div", "head");
    head.append(element("span", "kind", event.kind.replaceAll("_", " ")),
      element("time", "when", timeText(item.tsMs)));
    head.querySelector("time").dateTime = event.ts;
    const body = element("div", "body");
    const device = element("button", "device link", event.device_id);
    device.type = "button";
    device.addEventListener("click", () => this.onSelect(event));
    body.append(device);
    const verb = VERBS[event.kind];
    if (event.fence_id) {
      body.append(` ${verb || event.kind.replaceAll("_", " ")} `,
        element("strong", "fence", this.fenceName(event.fence_id)));
    } else if (event.delivery_id) {
      body.append(" · delivery ", element("strong", "delivery", event.delivery_id));
    }
    if (event.detail) body.append(element("div", "detail", event.detail));
    const actions = element("div", "actions");
    const button = element("button", "ack", "Acknowledge");
    button.type = "button";
    button.addEventListener("click", () => this._ack(item, button));
    actions.append(button);
    li.append(head, body, actions);
    this._applyFilter({ event, node: li });
    return li;
  }

  _ack(item, button) {
    if (!this.onAck(item.event.id)) {
      button.textContent = "offline: retry";
      return;
    }
    item.pending = true;
    button.disabled = true;
    button.textContent = "acknowledging…";
    clearTimeout(item.retry);
    item.retry = setTimeout(() => this._resetButton(item), ACK_RETRY_MS);
  }

  _resetButton(item) {
    item.pending = false;
    const button = item.node.querySelector("button.ack");
    if (!button) return;
    button.disabled = false;
    button.textContent = "Acknowledge";
  }

  _applyFilter(item) {
    item.node.hidden = this.filter !== "all" && category(item.event) !== this.filter;
  }

  _refresh() {
    this.emptyNote.hidden = this.order.length > 0;
    this.moreNote.hidden = this.dropped === 0;
    this.moreNote.textContent = `${this.dropped} older alert(s) not shown (the feed keeps ${this.max})`;
    this.unackedBadge.textContent = String(this.unackedCount);
  }
}
