// KFM's map on the HTML views. It decides nothing: everything it draws and
// every badge it shows comes from a governed answer of this API (TileJSON,
// items), fetched with the page's own credentials, so the map shows exactly
// what the caller's items would. Text from data is set with textContent,
// never as HTML.
(function () {
  "use strict";
  var el = document.getElementById("kfm-map");
  if (!el) return;
  var state = function (s, why) {
    el.dataset.state = s;
    if (why) el.dataset.error = String(why);
  };
  if (!window.maplibregl) {
    state("error", "MapLibre did not load");
    return;
  }
  maplibregl.setWorkerUrl(el.dataset.worker);
  var getJson = function (url) {
    return fetch(url, { headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) throw new Error(url + " answered " + r.status);
      return r.json();
    });
  };

  // The tiled layers (the base beneath, the collection's own tiles) are in
  // the style from the start, so MapLibre asks for their TileJSON and
  // tiles while it starts; a caller who may not read the base gets a map
  // without it (MapLibre reports the refusal below), not an error.
  function vectorLayers(id, layer) {
    var base = id === "base";
    var out = [
      { id: id + "-fill", type: "fill", source: id, "source-layer": layer,
        filter: ["==", ["geometry-type"], "Polygon"],
        paint: { "fill-color": base ? "#e7e1d3" : "#3b82f6", "fill-opacity": base ? 1 : 0.35 } },
      { id: id + "-line", type: "line", source: id, "source-layer": layer,
        paint: { "line-color": base ? "#b8ab8c" : "#1d4ed8", "line-width": base ? 0.6 : 1 } },
    ];
    if (!base) {
      out.push({ id: id + "-point", type: "circle", source: id, "source-layer": layer,
        filter: ["==", ["geometry-type"], "Point"],
        paint: { "circle-radius": 4, "circle-color": "#dc2626", "circle-stroke-color": "#fff", "circle-stroke-width": 1 } });
    }
    return out;
  }
  var style = {
    version: 8,
    sources: {},
    layers: [{ id: "background", type: "background", paint: { "background-color": "#f4f1ea" } }],
  };
  var tiled = [["base", el.dataset.baseTiles, el.dataset.baseLayer], ["data", el.dataset.tiles, el.dataset.layer]]
    .filter(function (t) { return t[1] && t[2]; });
  // A collection page draws only tiles: in the style from the start. An
  // items page draws its features once they are there, and its base with
  // them (measured: a base in the first style holds MapLibre's `load`
  // back longer than it saves there).
  var addTiled = function (t) {
    map.addSource(t[0], { type: "vector", url: t[1] });
    vectorLayers(t[0], t[2]).forEach(function (l) { map.addLayer(l); });
  };
  if (el.dataset.tiles) {
    tiled.forEach(function (t) {
      style.sources[t[0]] = { type: "vector", url: t[1] };
      style.layers = style.layers.concat(vectorLayers(t[0], t[2]));
    });
  }
  // Where to open: the extent of the caller's view of the collection, so
  // the first tiles asked for are the ones drawn.
  var bounds = (el.dataset.bounds || "").split(",").map(Number);
  var opening = bounds.length === 4 && bounds.every(isFinite)
    ? { bounds: [[bounds[0], bounds[1]], [bounds[2], bounds[3]]], fitBoundsOptions: { padding: 30, maxZoom: 12 } }
    : { center: [-98.4, 38.5], zoom: 5 };
  var options = {
    container: el,
    style: style,
    attributionControl: { compact: false },
    // Nothing fades in: the first frame is the drawn map.
    fadeDuration: 0,
  };
  Object.keys(opening).forEach(function (k) { options[k] = opening[k]; });
  var map = new maplibregl.Map(options);
  window.kfmMap = map;

  // The policy badges, from the governed answer's members.
  function badges(doc) {
    var box = document.createElement("div");
    box.className = "maplibregl-ctrl kfm-badges";
    box.setAttribute("data-testid", "map-badges");
    var add = function (cls, text, testid) {
      var s = document.createElement("span");
      s.className = "badge " + cls;
      s.textContent = text;
      s.setAttribute("data-testid", testid);
      box.appendChild(s);
    };
    add("label", "label: " + doc["kfm:policy_label"], "badge-label");
    add("lic", "license: " + doc["kfm:license"], "badge-license");
    if (doc["kfm:generalized"] === true) add("gen", "coordinates generalized", "badge-generalized");
    else add("", "precise coordinates", "badge-precise");
    var a = doc["kfm:attribution"];
    if (a && a.text) {
      var p = document.createElement("div");
      p.textContent = "Attribution: " + a.text;
      p.setAttribute("data-testid", "badge-attribution");
      box.appendChild(p);
    }
    map.addControl({ onAdd: function () { return box; }, onRemove: function () { box.remove(); } }, "top-left");
  }

  function fit(bounds) {
    if (bounds && bounds.length === 4) {
      map.fitBounds([[bounds[0], bounds[1]], [bounds[2], bounds[3]]], { padding: 30, maxZoom: 12, duration: 0 });
    }
  }

  // The items on this page: drawn from the items answer, linked with the
  // table (a click on either selects both).
  function items(doc) {
    var fc = doc.type === "Feature" ? { type: "FeatureCollection", features: [doc] } : doc;
    var box = null;
    fc.features.forEach(function (f) {
      f.properties = f.properties || {};
      f.properties["kfm:id"] = String(f.id);
      var walk = function (c) {
        if (typeof c[0] === "number") {
          box = box || [c[0], c[1], c[0], c[1]];
          box = [Math.min(box[0], c[0]), Math.min(box[1], c[1]), Math.max(box[2], c[0]), Math.max(box[3], c[1])];
        } else c.forEach(walk);
      };
      if (f.geometry) walk(f.geometry.coordinates);
    });
    map.addSource("items", { type: "geojson", data: fc, promoteId: "kfm:id" });
    map.addLayer({ id: "items-fill", type: "fill", source: "items", filter: ["==", ["geometry-type"], "Polygon"],
      paint: { "fill-color": ["case", ["boolean", ["feature-state", "sel"], false], "#f59e0b", "#3b82f6"], "fill-opacity": 0.35 } });
    map.addLayer({ id: "items-line", type: "line", source: "items", filter: ["!=", ["geometry-type"], "Point"],
      paint: { "line-color": "#1d4ed8", "line-width": 1 } });
    map.addLayer({ id: "items-point", type: "circle", source: "items", filter: ["==", ["geometry-type"], "Point"],
      paint: { "circle-radius": ["case", ["boolean", ["feature-state", "sel"], false], 7, 4],
        "circle-color": ["case", ["boolean", ["feature-state", "sel"], false], "#f59e0b", "#dc2626"],
        "circle-stroke-color": "#fff", "circle-stroke-width": 1 } });
    el.dataset.features = String(fc.features.length);
    fit(box);
    var selected = null;
    var select = function (fid, fromMap) {
      if (selected !== null) map.setFeatureState({ source: "items", id: selected }, { sel: false });
      document.querySelectorAll("tr.sel").forEach(function (r) { r.classList.remove("sel"); });
      selected = fid;
      map.setFeatureState({ source: "items", id: fid }, { sel: true });
      var row = document.querySelector('tr[data-fid="' + CSS.escape(fid) + '"]');
      if (row) {
        row.classList.add("sel");
        if (fromMap) row.scrollIntoView({ block: "nearest" });
      }
      el.dataset.selected = fid;
    };
    ["items-point", "items-fill"].forEach(function (l) {
      map.on("click", l, function (e) {
        if (e.features && e.features.length) select(String(e.features[0].properties["kfm:id"]), true);
      });
    });
    document.querySelectorAll("tr[data-fid]").forEach(function (row) {
      row.addEventListener("click", function () {
        var fid = row.dataset.fid;
        select(fid, false);
        var f = fc.features.find(function (x) { return String(x.id) === fid; });
        if (f && f.geometry && f.geometry.type === "Point") map.easeTo({ center: f.geometry.coordinates, duration: 0 });
      });
    });
  }

  // Every answer is asked for at once, while MapLibre starts (its worker,
  // WebGL); the items and badges are added when both are there.
  var data = el.dataset.tiles
    ? getJson(el.dataset.tiles).then(function (tj) { return { tiles: tj }; })
    : el.dataset.items
      ? getJson(el.dataset.items).then(function (doc) { return { items: doc }; })
      : Promise.resolve({});
  // When each part was there (milliseconds from the start of navigation),
  // so that a slow first draw says what it waited for.
  var at = function (what) { return function (v) { el.dataset[what] = String(Math.round(performance.now())); return v; }; };
  data = data.then(at("dataMs"));
  var loaded = new Promise(function (resolve) { map.on("load", resolve); }).then(at("loadMs"));
  at("startMs")();
  Promise.all([data, loaded]).then(function (r) {
    if (r[0].tiles) {
      badges(r[0].tiles);
      if (!opening.bounds) fit(r[0].tiles.bounds);
    } else if (r[0].items) {
      tiled.forEach(addTiled);
      items(r[0].items);
      badges(r[0].items);
    }
    map.once("idle", function () {
      var layers = ["items-point", "items-fill", "data-point", "data-fill", "data-line"].filter(function (l) { return map.getLayer(l); });
      el.dataset.rendered = String(map.queryRenderedFeatures({ layers: layers }).length);
      // From the start of navigation: the time to a drawn map.
      el.dataset.ms = String(Math.round(performance.now()));
      state("ready");
    });
    // The tiled layers may already be drawn and the map idle (nothing
    // added above changes the style): one more frame, so that `idle`
    // comes again.
    map.triggerRepaint();
  }).catch(function (e) {
    state("error", e.message);
  });
  map.on("error", function (e) {
    // Failed tiles are reported by MapLibre here; keep the first.
    if (!el.dataset.error) el.dataset.error = String(e.error && e.error.message);
  });
})();
