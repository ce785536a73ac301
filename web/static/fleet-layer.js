// The fleet on the map: every device on ONE canvas, not one DOM element per device, so
// that ten thousand positions redraw in a few milliseconds. Zoomed out, devices are
// aggregated on a screen grid (a circle with a count and the share of each status).
//
// Positions are kept in typed arrays as Web Mercator fractions (0..1) so a redraw is one
// multiply and subtract per device, with no Leaflet objects created per point.

/* global L */

export const STATUSES = ["moving", "stopped", "offline"];
export const KINDS = ["vehicle", "phone", "drone", "unknown"];
export const STATUS_COLOURS = ["#16a34a", "#d97706", "#6b7280"];
const KIND_CODE = { vehicle: 0, van: 0, phone: 1, drone: 2 };
const STATUS_CODE = { moving: 0, stopped: 1, offline: 2 };
const MAX_LAT = 85.0511287798; // where Web Mercator is cut off, as Leaflet does
const SHAPE_PX = 16; // a device's bitmap, in CSS pixels
const CLUSTER_CELL_PX = 64;
const PICK_RADIUS_PX = 10;
const FRAME_SAMPLES = 120;

export function mercatorX(lon) {
  return (lon + 180) / 360;
}

export function mercatorY(lat) {
  const clamped = Math.max(-MAX_LAT, Math.min(MAX_LAT, lat));
  const sin = Math.sin((clamped * Math.PI) / 180);
  return 0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI);
}

// Live device states by id, with flat arrays for drawing. `version` changes on every
// change so the layer knows when to redraw.
export class DeviceStore {
  constructor(capacity = 1024) {
    this.n = 0;
    this.ids = [];
    this.states = [];
    this.index = new Map();
    this.version = 0;
    this._allocate(capacity);
  }

  _allocate(capacity) {
    const grow = (Kind, old) => {
      const fresh = new Kind(capacity);
      if (old) fresh.set(old.subarray(0, this.n));
      return fresh;
    };
    this.mx = grow(Float64Array, this.mx);
    this.my = grow(Float64Array, this.my);
    this.tsMs = grow(Float64Array, this.tsMs);
    this.status = grow(Uint8Array, this.status);
    this.kind = grow(Uint8Array, this.kind);
    this.capacity = capacity;
  }

  get size() {
    return this.n;
  }

  get(id) {
    const i = this.index.get(id);
    return i === undefined ? null : this.states[i];
  }

  // Keeps the newest state by fix time; an older one (a late message after a
  // reconnect) is ignored unless `force` (a snapshot is the server's whole truth).
  upsert(state, force = false) {
    const id = state.device_id;
    const ts = Date.parse(state.ts);
    let i = this.index.get(id);
    if (i === undefined) {
      if (this.n === this.capacity) this._allocate(this.capacity * 2);
      i = this.n++;
      this.index.set(id, i);
      this.ids[i] = id;
    } else if (!force && ts < this.tsMs[i]) {
      return -1;
    }
    const previous = this.states[i];
    if (previous && state.kind == null && previous.kind != null) state.kind = previous.kind;
    this.states[i] = state;
    this.tsMs[i] = ts;
    this.mx[i] = mercatorX(state.lon);
    this.my[i] = mercatorY(state.lat);
    this.status[i] = STATUS_CODE[state.status] ?? 2;
    this.kind[i] = KIND_CODE[state.kind] ?? 3;
    this.version++;
    return i;
  }

  // The snapshot after (re)connecting or a new filter: these and only these devices.
  replaceAll(states) {
    const keep = new Set();
    for (const state of states) {
      this.upsert(state, true);
      keep.add(state.device_id);
    }
    for (const id of [...this.ids.slice(0, this.n)]) {
      if (!keep.has(id)) this.remove(id);
    }
    this.version++;
  }

  remove(id) {
    const i = this.index.get(id);
    if (i === undefined) return;
    const last = this.n - 1;
    if (i !== last) {
      const moved = this.ids[last];
      this.ids[i] = moved;
      this.states[i] = this.states[last];
      this.mx[i] = this.mx[last];
      this.my[i] = this.my[last];
      this.tsMs[i] = this.tsMs[last];
      this.status[i] = this.status[last];
      this.kind[i] = this.kind[last];
      this.index.set(moved, i);
    }
    this.ids.length = last;
    this.states.length = last;
    this.index.delete(id);
    this.n = last;
    this.version++;
  }

  countsByStatus() {
    const counts = [0, 0, 0];
    for (let i = 0; i < this.n; i++) counts[this.status[i]]++;
    return { moving: counts[0], stopped: counts[1], offline: counts[2] };
  }

  bounds() {
    if (this.n === 0) return null;
    let south = 90, west = 180, north = -90, east = -180;
    for (const state of this.states) {
      south = Math.min(south, state.lat);
      north = Math.max(north, state.lat);
      west = Math.min(west, state.lon);
      east = Math.max(east, state.lon);
    }
    return [[south, west], [north, east]];
  }
}

// Adds one device's outline, centred on (x, y), to the current path.
function addShape(ctx, kind, x, y) {
  if (kind === 0) { // van: a square
    ctx.rect(x - 5, y - 5, 10, 10);
  } else if (kind === 1) { // phone: a circle
    ctx.moveTo(x + 5, y);
    ctx.arc(x, y, 5, 0, 2 * Math.PI);
  } else if (kind === 2) { // drone: a triangle
    ctx.moveTo(x, y - 6.5);
    ctx.lineTo(x + 6, y + 5);
    ctx.lineTo(x - 6, y + 5);
    ctx.closePath();
  } else { // unknown kind: a diamond
    ctx.moveTo(x, y - 6);
    ctx.lineTo(x + 6, y);
    ctx.lineTo(x, y + 6);
    ctx.lineTo(x - 6, y);
    ctx.closePath();
  }
}

// Each kind and status as a small bitmap, kept as the list of its non-transparent
// pixels. Devices are written straight into one ImageData and put on the canvas once:
// measured in headless Chromium (software canvas, forced to finish drawing), 10,000
// devices cost ~8 ms this way, ~37 ms as drawImage calls and ~70 ms as one path per
// kind and status.
class Sprite {
  constructor(kind, status, dpr) {
    const size = Math.ceil(SHAPE_PX * dpr);
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.beginPath();
    addShape(ctx, kind, SHAPE_PX / 2, SHAPE_PX / 2);
    ctx.fillStyle = STATUS_COLOURS[status];
    ctx.fill();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#ffffff";
    ctx.stroke();
    const data = ctx.getImageData(0, 0, size, size).data;
    const words = new Uint32Array(data.buffer);
    const kept = [];
    for (let p = 0; p < size * size; p++) if (data[p * 4 + 3] > 0) kept.push(p);
    this.size = size;
    this.count = kept.length;
    this.dx = Int16Array.from(kept, (p) => p % size);
    this.dy = Int16Array.from(kept, (p) => Math.floor(p / size));
    this.word = Uint32Array.from(kept, (p) => words[p]);
    this.rgba = Uint8Array.from(kept.flatMap((p) => [...data.subarray(p * 4, p * 4 + 4)]));
  }

  // Top-left corner at device pixel (x0, y0) of an image `width` x `height`.
  blit(words, bytes, width, height, x0, y0) {
    const { size, count, dx, dy, word, rgba } = this;
    const inside = x0 >= 0 && y0 >= 0 && x0 + size <= width && y0 + size <= height;
    for (let p = 0; p < count; p++) {
      const x = x0 + dx[p], y = y0 + dy[p];
      if (!inside && (x < 0 || y < 0 || x >= width || y >= height)) continue;
      const at = y * width + x;
      const alpha = rgba[p * 4 + 3];
      if (alpha === 255) {
        words[at] = word[p];
        continue;
      }
      // an antialiased edge: "over" what is there (ImageData is not premultiplied)
      const j = at * 4;
      const sa = alpha / 255, da = bytes[j + 3] / 255;
      const oa = sa + da * (1 - sa);
      for (let c = 0; c < 3; c++) {
        bytes[j + c] = (rgba[p * 4 + c] * sa + bytes[j + c] * da * (1 - sa)) / oa;
      }
      bytes[j + 3] = oa * 255;
    }
  }
}

// A Leaflet renderer (like L.Canvas) that draws the store instead of vector paths: it
// inherits the padding, the repositioning after a pan and the CSS zoom animation.
export const FleetLayer = L.Renderer.extend({
  options: {
    padding: 0.3,
    pane: "fleetPane",
    clusterBelowZoom: 15, // zoomed out further than this, devices are aggregated
    // The canvas draws later, when the frame is composed: the benchmark forces it to
    // finish inside draw() so the time measured is the whole cost.
    measureFlush: false,
  },

  initialize(store, options) {
    L.Renderer.prototype.initialize.call(this, options);
    this.store = store;
    this.selected = null;
    this.clusters = [];
    this.stats = { lastMs: 0, avgMs: 0, p95Ms: 0, maxMs: 0, draws: 0, drawn: 0, clusters: 0 };
    this._samples = [];
    this._frame = null;
    this._sx = new Float32Array(0);
    this._sy = new Float32Array(0);
    this._visible = new Uint8Array(0);
    this._list = new Int32Array(0);
  },

  _initContainer() {
    this._container = L.DomUtil.create("canvas", "fp-fleet");
    this._ctx = this._container.getContext("2d");
    this._dpr = window.devicePixelRatio || 1;
    this._sprites = [];
    for (let kind = 0; kind < KINDS.length; kind++) {
      for (let status = 0; status < STATUSES.length; status++) {
        this._sprites.push(new Sprite(kind, status, this._dpr));
      }
    }
  },

  _destroyContainer() {
    if (this._frame) L.Util.cancelAnimFrame(this._frame);
    L.DomUtil.remove(this._container);
    delete this._ctx;
    delete this._image;
  },

  _updatePaths() {}, // no vector paths here

  _update() {
    if (this._map._animatingZoom && this._bounds) return;
    L.Renderer.prototype._update.call(this);
    const b = this._bounds;
    const size = b.getSize();
    const canvas = this._container;
    L.DomUtil.setPosition(canvas, b.min);
    const width = Math.round(size.x * this._dpr);
    const height = Math.round(size.y * this._dpr);
    if (!this._image || canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
      canvas.style.width = `${size.x}px`;
      canvas.style.height = `${size.y}px`;
      this._image = this._ctx.createImageData(width, height);
      this._words = new Uint32Array(this._image.data.buffer);
    }
    this._origin = this._map.getPixelOrigin();
    this.draw();
  },

  redraw() {
    if (this._frame || !this._map) return;
    this._frame = L.Util.requestAnimFrame(() => {
      this._frame = null;
      this.draw();
    });
  },

  draw() {
    if (!this._map || !this._bounds || !this._image) return;
    const started = performance.now();
    const b = this._bounds;
    const width = b.max.x - b.min.x;
    const height = b.max.y - b.min.y;
    const store = this.store;
    const n = store.n;
    if (this._sx.length < store.capacity) {
      this._sx = new Float32Array(store.capacity);
      this._sy = new Float32Array(store.capacity);
      this._visible = new Uint8Array(store.capacity);
      this._list = new Int32Array(store.capacity);
    }
    const scale = 256 * Math.pow(2, this._zoom);
    const offX = this._origin.x + b.min.x;
    const offY = this._origin.y + b.min.y;
    const sx = this._sx, sy = this._sy, visible = this._visible;
    const mx = store.mx, my = store.my;
    const margin = SHAPE_PX;
    for (let i = 0; i < n; i++) {
      const x = mx[i] * scale - offX;
      const y = my[i] * scale - offY;
      sx[i] = x;
      sy[i] = y;
      visible[i] = x > -margin && x < width + margin && y > -margin && y < height + margin ? 1 : 0;
    }
    this.clusters = [];
    this._words.fill(0);
    const drawn = this._zoom < this.options.clusterBelowZoom
      ? this._drawClustered(n, offX, offY, width, height)
      : this._drawAll(n);
    this._drawSelection();
    if (this.options.measureFlush) this._ctx.getImageData(0, 0, 1, 1);
    this._record(performance.now() - started, drawn);
  },

  _drawAll(n) {
    const { _visible: visible, _list: list } = this;
    let count = 0;
    for (let i = 0; i < n; i++) {
      if (!visible[i]) continue;
      visible[i] = 2; // drawn on its own: pickable
      list[count++] = i;
    }
    this._putDevices(list, count);
    return count;
  },

  // Writes the devices `list[0..count)` into the image and puts it on the canvas,
  // replacing everything drawn before.
  _putDevices(list, count) {
    const { kind, status } = this.store;
    const { _sx: sx, _sy: sy, _sprites: sprites, _dpr: dpr, _words: words } = this;
    const image = this._image;
    const bytes = image.data;
    for (let j = 0; j < count; j++) {
      const i = list[j];
      const sprite = sprites[kind[i] * 3 + status[i]];
      const x0 = Math.round(sx[i] * dpr - sprite.size / 2);
      const y0 = Math.round(sy[i] * dpr - sprite.size / 2);
      sprite.blit(words, bytes, image.width, image.height, x0, y0);
    }
    this._ctx.putImageData(image, 0, 0);
  },

  // Cells are fixed in world pixels (not screen pixels) so clusters do not jump while
  // the map is panned.
  _drawClustered(n, offX, offY, width, height) {
    const G = CLUSTER_CELL_PX;
    const gx0 = Math.floor(offX / G) - 1;
    const gy0 = Math.floor(offY / G) - 1;
    const cols = Math.ceil(width / G) + 3;
    const rows = Math.ceil(height / G) + 3;
    const cells = cols * rows;
    const count = new Int32Array(cells);
    const first = new Int32Array(cells);
    const sumX = new Float64Array(cells);
    const sumY = new Float64Array(cells);
    const byStatus = new Int32Array(cells * 3);
    const { _sx: sx, _sy: sy, _visible: visible } = this;
    const status = this.store.status;
    for (let i = 0; i < n; i++) {
      if (!visible[i]) continue;
      const cx = Math.floor((sx[i] + offX) / G) - gx0;
      const cy = Math.floor((sy[i] + offY) / G) - gy0;
      if (cx < 0 || cy < 0 || cx >= cols || cy >= rows) continue;
      const k = cy * cols + cx;
      if (count[k] === 0) first[k] = i;
      count[k]++;
      sumX[k] += sx[i];
      sumY[k] += sy[i];
      byStatus[k * 3 + status[i]]++;
    }
    // a device alone in its cell is drawn as itself, below the clusters
    const singles = this._list;
    let single = 0;
    for (let k = 0; k < cells; k++) {
      if (count[k] === 1) {
        visible[first[k]] = 2;
        singles[single++] = first[k];
      }
    }
    this._putDevices(singles, single);
    let drawn = single;
    const ctx = this._ctx;
    ctx.setTransform(this._dpr, 0, 0, this._dpr, 0, 0);
    ctx.font = "bold 11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let k = 0; k < cells; k++) {
      const c = count[k];
      if (c < 2) continue;
      drawn++;
      const x = sumX[k] / c, y = sumY[k] / c;
      const r = Math.min(26, 11 + 3 * Math.log2(c));
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fillStyle = "rgba(255,255,255,0.92)";
      ctx.fill();
      // the ring shows the share of each status in the cluster
      let angle = -Math.PI / 2;
      ctx.lineWidth = 4;
      for (let s = 0; s < 3; s++) {
        const share = byStatus[k * 3 + s] / c;
        if (share === 0) continue;
        ctx.beginPath();
        ctx.arc(x, y, r - 2, angle, angle + share * 2 * Math.PI);
        ctx.strokeStyle = STATUS_COLOURS[s];
        ctx.stroke();
        angle += share * 2 * Math.PI;
      }
      ctx.fillStyle = "#111827";
      ctx.fillText(c > 9999 ? `${Math.round(c / 1000)}k` : String(c), x, y);
      this.clusters.push({ x, y, r, count: c });
    }
    return drawn;
  },

  _drawSelection() {
    if (this.selected == null) return;
    const i = this.store.index.get(this.selected);
    if (i === undefined) return;
    const x = this._sx[i], y = this._sy[i];
    const ctx = this._ctx;
    ctx.setTransform(this._dpr, 0, 0, this._dpr, 0, 0);
    ctx.beginPath();
    ctx.arc(x, y, 11, 0, 2 * Math.PI);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#2563eb";
    ctx.stroke();
    ctx.beginPath();
    addShape(ctx, this.store.kind[i], x, y);
    ctx.fillStyle = STATUS_COLOURS[this.store.status[i]];
    ctx.fill();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#ffffff";
    ctx.stroke();
  },

  _record(ms, drawn) {
    const samples = this._samples;
    samples.push(ms);
    if (samples.length > FRAME_SAMPLES) samples.shift();
    const sorted = [...samples].sort((a, b) => a - b);
    const stats = this.stats;
    stats.lastMs = ms;
    stats.avgMs = samples.reduce((a, b) => a + b, 0) / samples.length;
    stats.p95Ms = sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.95))];
    stats.maxMs = sorted[sorted.length - 1];
    stats.draws++;
    stats.drawn = drawn;
    stats.clusters = this.clusters.length;
    this.fire("drawn", { ms });
  },

  // What is under a click: a cluster (zoom into it) or the nearest device.
  pick(layerPoint) {
    if (!this._bounds) return null;
    const x = layerPoint.x - this._bounds.min.x;
    const y = layerPoint.y - this._bounds.min.y;
    for (const cluster of this.clusters) {
      if (Math.hypot(cluster.x - x, cluster.y - y) <= cluster.r) {
        const point = L.point(cluster.x + this._bounds.min.x, cluster.y + this._bounds.min.y);
        return { cluster, latlng: this._map.layerPointToLatLng(point) };
      }
    }
    let best = null, bestD = PICK_RADIUS_PX;
    const n = Math.min(this.store.n, this._sx.length);
    for (let i = 0; i < n; i++) {
      if (this._visible[i] !== 2) continue; // inside a cluster: the cluster is picked
      const d = Math.hypot(this._sx[i] - x, this._sy[i] - y);
      if (d <= bestD) {
        best = i;
        bestD = d;
      }
    }
    return best === null ? null : { deviceId: this.store.ids[best] };
  },
});
