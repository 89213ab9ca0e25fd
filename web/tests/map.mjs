// Drives KFM's map in headless Chromium (Debian's chromium, driven by
// playwright-core): the map loads and draws the features; an anonymous
// caller sees the generalized badge and generalized points, an approved
// researcher precise ones; the table and the map select together; no
// request leaves the server under test; no console error. The stewards'
// truth-path page: the same 404 as a missing page for anyone else, the
// stage of every dataset for a steward. Screenshots go to OUT_DIR for
// review. Prints one JSON line of what it measured.
//
//   node web/tests/map.mjs http://127.0.0.1:PORT RESEARCHER_TOKEN OUT_DIR STEWARD_TOKEN
//
// Exit 0 when every check passed, 1 with the failed check on stderr.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const [base, researcherToken, outDir, stewardToken] = process.argv.slice(2);
if (!base || !researcherToken || !outDir || !stewardToken) {
  console.error("usage: map.mjs BASE_URL RESEARCHER_TOKEN OUT_DIR STEWARD_TOKEN");
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });
const origin = new URL(base).origin;
const failures = [];
const check = (ok, what) => {
  if (!ok) failures.push(what);
};

const browser = await chromium.launch({
  executablePath: process.env.KFM_CHROMIUM || "/usr/bin/chromium",
  // WebGL without a GPU: SwiftShader, which Chromium needs told it may use.
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
});

async function visit(name, path, token) {
  const context = await browser.newContext({
    viewport: { width: 1100, height: 900 },
    extraHTTPHeaders: token ? { Authorization: `Bearer ${token}` } : {},
  });
  const page = await context.newPage();
  const requests = [];
  const errors = [];
  context.on("request", (r) => requests.push(r.url()));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + path);
  await page.waitForSelector('#kfm-map[data-state="ready"], #kfm-map[data-state="error"]', { timeout: 60000 });
  const d = await page.$eval("#kfm-map", (el) => ({ ...el.dataset }));
  await page.screenshot({ path: `${outDir}/${name}.png` });
  const offsite = requests.filter((u) => !u.startsWith(origin) && !u.startsWith("blob:") && !u.startsWith("data:"));
  check(d.state === "ready", `${name}: the map did not load: ${d.error}`);
  check(Number(d.rendered) > 0, `${name}: the map drew nothing (rendered=${d.rendered})`);
  check(offsite.length === 0, `${name}: requests off ${origin}: ${offsite.join(", ")}`);
  check(errors.length === 0, `${name}: console errors: ${errors.join(" | ")}`);
  return { page, context, d, requests: requests.length };
}

const sites = "/collections/ks-sites-synthetic/items?f=html&limit=200";
const coords = async (page) =>
  page.evaluate(() => window.kfmMap.getSource("items").serialize().data.features.map((f) => f.geometry.coordinates.join(",")));
const api = async (token) => {
  const r = await fetch(base + "/collections/ks-sites-synthetic/items?limit=200", {
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  return (await r.json()).features.map((f) => f.geometry.coordinates.join(","));
};

const result = {};
// Where the first draw spent its time (ms from the start of navigation):
// the map's script running, its answers there, MapLibre loaded.
const parts = (d) => ({ start: Number(d.startMs), data: Number(d.dataMs), load: Number(d.loadMs) });
// Anonymous: the generalized badge, the generalized positions only.
{
  const v = await visit("sites-anonymous", sites, null);
  const shown = await coords(v.page);
  const gen = new Set(await api(null));
  const precise = new Set(await api(researcherToken));
  check(await v.page.isVisible('[data-testid="badge-generalized"]'), "anonymous: no generalized badge on the map");
  check(!(await v.page.isVisible('[data-testid="badge-precise"]')), "anonymous: a precise badge on the map");
  check(shown.length > 0 && shown.every((c) => gen.has(c)), "anonymous: the map holds a position that is not generalized");
  check(!shown.some((c) => precise.has(c) && !gen.has(c)), "anonymous: the map holds a precise position");
  // The table and the map select together.
  const fid = await v.page.$eval("tr[data-fid]", (r) => r.dataset.fid);
  await v.page.click(`tr[data-fid="${fid}"] td:nth-child(2)`);
  const sel = await v.page.$eval("#kfm-map", (el) => el.dataset.selected);
  check(sel === fid, `anonymous: clicking row ${fid} selected ${sel} on the map`);
  check(await v.page.isVisible("tr.sel"), "anonymous: the clicked row is not marked");
  result.anonymous = { ms: Number(v.d.ms), ...parts(v.d), rendered: Number(v.d.rendered), requests: v.requests };
  await v.context.close();
}
// The approved researcher: precise positions, no generalized badge.
{
  const v = await visit("sites-researcher", sites, researcherToken);
  const shown = await coords(v.page);
  const precise = new Set(await api(researcherToken));
  check(await v.page.isVisible('[data-testid="badge-precise"]'), "researcher: no precise badge");
  check(!(await v.page.isVisible('[data-testid="badge-generalized"]')), "researcher: a generalized badge");
  check(shown.length > 0 && shown.every((c) => precise.has(c)), "researcher: the map holds positions that are not the precise ones");
  result.researcher = { ms: Number(v.d.ms), ...parts(v.d), rendered: Number(v.d.rendered), requests: v.requests };
  await v.context.close();
}
// A collection page: its vector tiles over the counties.
{
  const v = await visit("places-tiles", "/collections/ks-places?f=html", null);
  check(await v.page.isVisible('[data-testid="badge-license"]'), "places: no license badge");
  result.tiles = { ms: Number(v.d.ms), ...parts(v.d), rendered: Number(v.d.rendered), requests: v.requests };
  await v.context.close();
}
// The truth path: nothing for a researcher, every dataset's stage for a
// steward, and the page itself talks to nothing but the server.
{
  const denied = await browser.newContext({ extraHTTPHeaders: { Authorization: `Bearer ${researcherToken}` } });
  const dp = await denied.newPage();
  const r = await dp.goto(base + "/steward?f=html");
  check(r.status() === 404, `steward page: a researcher got ${r.status()}, not 404`);
  check(!(await dp.isVisible("#truth-path")), "steward page: a researcher sees the truth-path table");
  await denied.close();
  const context = await browser.newContext({
    viewport: { width: 1100, height: 900 },
    extraHTTPHeaders: { Authorization: `Bearer ${stewardToken}` },
  });
  const page = await context.newPage();
  const requests = [];
  const errors = [];
  context.on("request", (q) => requests.push(q.url()));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  const ok = await page.goto(base + "/steward?f=html");
  check(ok.status() === 200, `steward page: a steward got ${ok.status()}`);
  const rows = await page.$$eval("#truth-path tr[data-dataset]", (rs) =>
    rs.map((r) => [r.dataset.dataset, r.querySelector(".badge").textContent]),
  );
  const stages = Object.fromEntries(rows);
  check(stages["ks-places"] === "published", `steward page: ks-places is ${stages["ks-places"]}, not published`);
  check(stages["ks-sites-synthetic"] === "published", "steward page: ks-sites-synthetic is not listed as published");
  check(await page.isVisible("table.gates"), "steward page: no gate table");
  const offsite = requests.filter((u) => !u.startsWith(origin) && !u.startsWith("data:"));
  check(offsite.length === 0, `steward page: requests off ${origin}: ${offsite.join(", ")}`);
  check(errors.length === 0, `steward page: console errors: ${errors.join(" | ")}`);
  await page.screenshot({ path: `${outDir}/steward.png`, fullPage: true });
  result.steward = { datasets: rows.length };
  await context.close();
}
await browser.close();
console.log(JSON.stringify(result));
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
