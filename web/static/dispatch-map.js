// What the fleet is drawn over: the configured tiles, else the roads of the configured
// OpenStreetMap extract, else a plain background; and the geofences, either way.

/* global L */

import { mercatorX, mercatorY } from "./fleet-layer.js";

const ROAD_REQUEST_DELAY_MS = 200;
const ROAD_SNAP_TILES = 4; // boxes snap to 4x4-tile blocks so small pans hit the cache
const EARTH_CIRCUMFERENCE_M = 40075016.686;
// [colour, width in px at zoom 14]
const ROAD_STYLES = {
  motorway: ["#e8925b", 3.5],
  trunk: ["#f0b072", 3.2],
  primary: ["#f5cd83", 3],
  secondary: ["#f9e3a3", 2.6],
  tertiary: ["#ffffff", 2.3],
  motorway_link: ["#e8925b", 1.8],
  trunk_link: ["#f0b072", 1.8],
  primary_link: ["#f5cd83", 1.8],
  secondary_link: ["#f9e3a3", 1.6],
  tertiary_link: ["#ffffff", 1.6],
};
const MINOR_ROAD = ["#ffffff", 1.6];
const SERVICE_ROAD = ["#ffffff", 1];

function tileLon(x, z) {
  return (x / 2 ** z) * 360 - 180;
}

function tileLat(y, z) {
  const n = Math.PI * (1 - (2 * y) / 2 ** z);
  return (Math.atan(Math.sinh(n)) * 180) / Math.PI;
}

// The view's box widened to whole blocks of tiles: the same few boxes come back while
// a dispatcher pans around, so the browser's cache answers most road requests.
export function snappedBox(bounds, zoom) {
  const tiles = 2 ** zoom;
  const snap = (value, round) => {
    const block = Math[round](value * tiles / ROAD_SNAP_TILES) * ROAD_SNAP_TILES;
    return Math.max(0, Math.min(tiles, block));
  };
  const x0 = snap(mercatorX(bounds.getWest()), "floor");
  const x1 = snap(mercatorX(bounds.getEast()), "ceil");
  const y0 = snap(mercatorY(bounds.getNorth()), "floor");
  const y1 = snap(mercatorY(bounds.getSouth()), "ceil");
  return [tileLat(y1, zoom), tileLon(x0, zoom), tileLat(y0, zoom), tileLon(x1, zoom)].map(
    (v) => Number(v.toFixed(6)),
  );
}

function roadStyle(roadClass, zoom) {
  const [color, width] =
    ROAD_STYLES[roadClass] || (roadClass === "service" ? SERVICE_ROAD : MINOR_ROAD);
  const factor = Math.max(0.6, Math.min(2.4, 1 + (zoom - 14) * 0.35));
  return { color, weight: width * factor, opacity: 1, lineCap: "round", lineJoin: "round" };
}

// Roads fetched for the visible box at the map's zoom, drawn on their own canvas.
export class Roads {
  constructor(map, api) {
    this.map = map;
    this.api = api;
    this.renderer = L.canvas({ padding: 0.5, pane: "roadsPane" });
    this.layer = null;
    this.key = null;
    this.seq = 0;
    this.features = 0;
    this.error = null;
    let timer = null;
    map.on("moveend", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.refresh(), ROAD_REQUEST_DELAY_MS);
    });
  }

  async refresh() {
    const zoom = Math.max(0, Math.min(22, Math.round(this.map.getZoom())));
    const box = snappedBox(this.map.getBounds(), zoom);
    const key = `${box.join(",")}/${zoom}`;
    if (key === this.key) return;
    this.key = key;
    const seq = ++this.seq;
    let data;
    try {
      const resp = await this.api(`/api/v1/basemap/roads?bbox=${box.join(",")}&zoom=${zoom}`);
      if (!resp.ok) throw new Error(await problemText(resp));
      data = await resp.json();
    } catch (err) {
      if (seq === this.seq) {
        this.key = null;
        this.error = String(err.message || err);
      }
      return;
    }
    if (seq !== this.seq) return; // a newer view asked meanwhile
    const layer = L.geoJSON(data, {
      renderer: this.renderer,
      interactive: false,
      style: (feature) => roadStyle(feature.properties.class, zoom),
    });
    layer.addTo(this.map);
    if (this.layer) this.layer.remove();
    this.layer = layer;
    this.features = data.features.length;
    this.error = null;
  }
}

export async function problemText(resp) {
  try {
    const body = await resp.json();
    return body.detail || body.title || `HTTP ${resp.status}`;
  } catch {
    return `HTTP ${resp.status}`;
  }
}

// The base layer the deployment configured. Returns what was chosen and the area the
// base map covers, if it knows one.
export async function setUpBasemap(map, api) {
  let info;
  try {
    const resp = await api("/api/v1/basemap");
    if (!resp.ok) throw new Error(await problemText(resp));
    info = await resp.json();
  } catch (err) {
    return { mode: "plain", bounds: null, error: String(err.message || err) };
  }
  const bounds = info.bounds
    ? L.latLngBounds([info.bounds[0], info.bounds[1]], [info.bounds[2], info.bounds[3]])
    : null;
  if (info.tiles) {
    L.tileLayer(info.tiles, {
      maxZoom: 19,
      attribution: `base map: ${new URL(info.tiles.replace("{s}", "a"), location.href).host}`,
    }).addTo(map);
    return { mode: "tiles", bounds };
  }
  if (info.roads) {
    const roads = new Roads(map, api);
    if (info.attribution) map.attributionControl.addAttribution(info.attribution);
    return { mode: "roads", bounds, roads };
  }
  return { mode: "plain", bounds };
}

function metresPerPixel(lat, zoom) {
  return (EARTH_CIRCUMFERENCE_M * Math.cos((lat * Math.PI) / 180)) / (256 * 2 ** zoom);
}

const FENCE_STYLE = { color: "#2563eb", weight: 2, opacity: 0.9, fillOpacity: 0.08 };
const FLASH_STYLE = { color: "#dc2626", fillOpacity: 0.25 };
const FLASH_MS = 3000;

// Geofences as GeoJSON from the API: polygons as they are, circles (a Point with
// radius_m) as circles on the ground, corridors (a LineString with width_m) as a line
// whose width follows the zoom so it covers its width in metres.
export class Fences {
  constructor(map, api) {
    this.map = map;
    this.api = api;
    this.group = L.featureGroup().addTo(map);
    this.byId = new Map();
    this.names = new Map();
    this.corridors = [];
    this.error = null;
    map.on("load zoomend", () => this._fitCorridors());
  }

  get count() {
    return this.byId.size;
  }

  async load() {
    try {
      const resp = await this.api("/api/v1/geofences");
      if (!resp.ok) throw new Error(await problemText(resp));
      this.draw(await resp.json());
      this.error = null;
    } catch (err) {
      this.error = String(err.message || err);
    }
  }

  draw(collection) {
    this.group.clearLayers();
    this.byId.clear();
    this.names.clear();
    this.corridors = [];
    for (const feature of collection.features || []) {
      const props = feature.properties || {};
      const id = props.id ?? feature.id;
      const layer = this._layerFor(feature, props);
      if (!layer || id == null) continue;
      const name = props.name || id;
      layer.bindTooltip(String(name), { sticky: true });
      layer.addTo(this.group);
      this.byId.set(String(id), layer);
      this.names.set(String(id), String(name));
    }
  }

  _layerFor(feature, props) {
    const geometry = feature.geometry;
    if (!geometry) return null;
    if (geometry.type === "Point" && props.radius_m) {
      const [lon, lat] = geometry.coordinates;
      return L.circle([lat, lon], { ...FENCE_STYLE, radius: props.radius_m });
    }
    if (geometry.type === "LineString" && props.width_m) {
      const line = L.polyline(
        geometry.coordinates.map(([lon, lat]) => [lat, lon]),
        { ...FENCE_STYLE, opacity: 0.35, lineCap: "round" },
      );
      line.widthM = props.width_m;
      this.corridors.push(line);
      this._fitCorridor(line);
      return line;
    }
    return L.geoJSON(feature, { style: () => FENCE_STYLE });
  }

  _fitCorridors() {
    for (const line of this.corridors) this._fitCorridor(line);
  }

  _fitCorridor(line) {
    if (this.map.getZoom() === undefined) return; // no view yet: fitted on the first zoom
    const lat = line.getBounds().getCenter().lat;
    const weight = line.widthM / metresPerPixel(lat, this.map.getZoom());
    line.setStyle({ weight: Math.max(2, weight) });
  }

  nameOf(id) {
    return id == null ? null : this.names.get(String(id)) || String(id);
  }

  bounds() {
    // A circle's own getBounds() needs a map with a view, which the first placement of
    // the view is still looking for: circles are measured here instead.
    const bounds = L.latLngBounds([]);
    for (const layer of this.byId.values()) {
      if (layer instanceof L.Circle) {
        const { lat, lng } = layer.getLatLng();
        const dLat = layer.getRadius() / 111_320;
        const dLng = dLat / Math.max(Math.cos((lat * Math.PI) / 180), 0.01);
        bounds.extend([[lat - dLat, lng - dLng], [lat + dLat, lng + dLng]]);
      } else {
        bounds.extend(layer.getBounds());
      }
    }
    return bounds.isValid() ? bounds : null;
  }

  flash(id) {
    const layer = this.byId.get(String(id));
    if (!layer || !layer.setStyle) return;
    layer.setStyle(FLASH_STYLE);
    clearTimeout(layer.flashTimer);
    layer.flashTimer = setTimeout(() => layer.setStyle({ color: FENCE_STYLE.color,
      fillOpacity: FENCE_STYLE.fillOpacity }), FLASH_MS);
  }
}
