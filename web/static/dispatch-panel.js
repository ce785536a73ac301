// The panel of the device a dispatcher clicked: its live state, its trail of the last
// hour (from the history API, then extended by the live positions) and its deliveries'
// ETAs.

/* global L */

import { problemText } from "./dispatch-map.js";

const TRAIL_WINDOW_MS = 3600 * 1000;
const TRAIL_CLOCK_SLACK_MS = 60 * 1000;
const TRAIL_MAX_PAGES = 5; // of up to 10,000 fixes: an hour at 1 Hz is 3,600
const TRAIL_STYLE = { color: "#2563eb", weight: 3, opacity: 0.75, interactive: false };

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function fixed(value, digits, unit) {
  return value == null ? null : `${Number(value).toFixed(digits)}${unit}`;
}

// [lat, lon] points of any GeoJSON the history API may give: points, lines, either
// bare or as features of a collection, in the order given.
export function trailPoints(geojson) {
  const out = [];
  const visit = (node) => {
    if (!node) return;
    if (node.type === "FeatureCollection") node.features.forEach(visit);
    else if (node.type === "Feature") visit(node.geometry);
    else if (node.type === "Point") out.push([node.coordinates[1], node.coordinates[0]]);
    else if (node.type === "LineString" || node.type === "MultiPoint") {
      for (const c of node.coordinates) out.push([c[1], c[0]]);
    } else if (node.type === "MultiLineString") {
      for (const line of node.coordinates) for (const c of line) out.push([c[1], c[0]]);
    }
  };
  visit(geojson);
  return out;
}

function nextLink(header) {
  if (!header) return null;
  for (const part of header.split(",")) {
    const match = part.match(/<([^>]+)>\s*;\s*rel="?next"?/);
    if (match) return match[1];
  }
  return null;
}

export class DevicePanel {
  constructor({ map, api, store, layer, etas, root }) {
    this.map = map;
    this.api = api;
    this.store = store;
    this.layer = layer;
    this.etas = etas;
    this.root = root;
    this.id = null;
    this.follow = false;
    this.trail = null;
    this.trailState = "none";
    this.trailCount = 0;
    this.trailRenderer = L.canvas({ padding: 0.5 });
    root.querySelector("#panel-close").addEventListener("click", () => this.close());
    this.followButton = root.querySelector("#panel-follow");
    this.followButton.addEventListener("click", () => {
      this.follow = !this.follow;
      this.followButton.setAttribute("aria-pressed", String(this.follow));
      if (this.follow) this._centre();
    });
  }

  open(id) {
    this.close();
    this.id = id;
    this.layer.selected = id;
    this.layer.redraw();
    this.root.hidden = false;
    this.root.querySelector("#panel-title").textContent = id;
    this.render();
    this.loadTrail(id);
  }

  close() {
    if (this.trail) this.trail.remove();
    this.trail = null;
    this.trailState = "none";
    this.trailCount = 0;
    this.id = null;
    this.layer.selected = null;
    this.layer.redraw();
    this.root.hidden = true;
  }

  // A new live state of the shown device.
  update(state) {
    if (state.device_id !== this.id) return;
    if (this.trail) {
      const points = this.trail.getLatLngs();
      const last = points[points.length - 1];
      if (!last || last.lat !== state.lat || last.lng !== state.lon) {
        this.trail.addLatLng([state.lat, state.lon]);
        this.trailCount++;
      }
    }
    if (this.follow) this._centre();
    this.render();
  }

  _centre() {
    const state = this.store.get(this.id);
    if (state) this.map.panTo([state.lat, state.lon], { animate: false });
  }

  render() {
    if (this.id == null) return;
    const state = this.store.get(this.id);
    const fields = this.root.querySelector("#panel-fields");
    const rows = state
      ? [
        ["kind", state.kind || "unknown"],
        ["status", state.status],
        ["fix", `${new Date(state.ts).toLocaleTimeString([], { hour12: false })} (${ago(Date.parse(state.ts))})`],
        ["position", `${state.lat.toFixed(5)}, ${state.lon.toFixed(5)}`],
        ["speed", fixed(state.speed == null ? null : state.speed * 3.6, 0, " km/h")],
        ["heading", fixed(state.heading, 0, "°")],
        ["altitude", fixed(state.alt, 0, " m")],
        ["above take-off", fixed(state.rel_alt, 0, " m")],
        ["battery", fixed(state.battery, 0, " %")],
      ]
      : [["status", "not in the live view (outside the map's area or not reporting)"]];
    fields.replaceChildren();
    for (const [name, value] of rows) {
      if (value == null) continue;
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value;
      if (name === "status") dd.className = `status ${value}`;
      fields.append(dt, dd);
    }
    const trailNote = this.root.querySelector("#panel-trail");
    trailNote.textContent =
      this.trailState === "loading" ? "trail: loading…"
        : this.trailState === "loaded" ? `trail: ${this.trailCount} fixes in the last hour`
          : this.trailState.startsWith("error") ? `trail unavailable: ${this.trailState.slice(6)}`
            : "";
    const list = this.root.querySelector("#panel-etas");
    list.replaceChildren();
    for (const eta of this.etas.values()) {
      if (eta.vehicle_id !== this.id) continue;
      const li = document.createElement("li");
      const p50 = new Date(eta.p50).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" });
      const p90 = new Date(eta.p90).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" });
      li.textContent = `${eta.delivery_id}: ${eta.state}, ETA ${p50} (P90 ${p90})` +
        (eta.late_risk ? " · late risk" : "");
      list.append(li);
    }
  }

  async loadTrail(id) {
    this.trailState = "loading";
    this.render();
    const now = Date.now();
    const from = new Date(now - TRAIL_WINDOW_MS).toISOString();
    // a little past now: a device whose clock runs ahead still has its last fixes shown
    const to = new Date(now + TRAIL_CLOCK_SLACK_MS).toISOString();
    let url = `/api/v1/devices/${encodeURIComponent(id)}/history?format=geojson&geometry=line` +
      `&from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`;
    const points = [];
    try {
      for (let page = 0; url && page < TRAIL_MAX_PAGES; page++) {
        const resp = await this.api(url);
        if (!resp.ok) throw new Error(await problemText(resp));
        const body = await resp.json();
        points.push(...trailPoints(body));
        url = nextLink(resp.headers.get("Link"));
      }
    } catch (err) {
      if (this.id === id) {
        this.trailState = `error:${err.message || err}`;
        this.render();
      }
      return;
    }
    if (this.id !== id) return; // another device was opened meanwhile
    const state = this.store.get(id);
    if (state) {
      const last = points[points.length - 1];
      if (!last || last[0] !== state.lat || last[1] !== state.lon) points.push([state.lat, state.lon]);
    }
    this.trail = L.polyline(points, { ...TRAIL_STYLE, renderer: this.trailRenderer }).addTo(this.map);
    this.trailCount = points.length;
    this.trailState = "loaded";
    this.render();
  }
}
