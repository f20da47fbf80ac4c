// Runs the script of examples/chat/web/index.html in Node against a live
// `hearth serve`, as two browser tabs would: a small DOM stand-in, Node's
// WebSocket, and a fetch that applies the browser's CORS checks (preflight,
// Access-Control-Allow-Origin) for the page's origin.
//
//   [PAGE_URL=http://127.0.0.1:8000/] node [--experimental-websocket] web_page.mjs <http://server> <page origin> [expect-cors-refusal]
//
// Exits 0 when two users sign up from the page, one invites the other, and
// messages typed on each page appear on the other; with
// `expect-cors-refusal`, when sign-in is blocked by CORS instead.
// Used by web_page.rs; Node >= 20 (20 needs --experimental-websocket).

import { readFileSync } from "node:fs";
import vm from "node:vm";

const [base, origin, mode] = process.argv.slice(2);
if (!base || !origin) {
  console.error("usage: web_page.mjs <http://server> <page origin> [expect-cors-refusal]");
  process.exit(2);
}
if (typeof WebSocket === "undefined") {
  console.error("this Node has no WebSocket: use Node >= 22, or 20 with --experimental-websocket");
  process.exit(2);
}
// The page from disk, or as served (PAGE_URL, e.g. http://127.0.0.1:8000/
// from `python3 -m http.server -d examples/chat/web 8000`).
const html = process.env.PAGE_URL
  ? await (await fetch(process.env.PAGE_URL)).text()
  : readFileSync(new URL("../web/index.html", import.meta.url), "utf8");
const script = html.match(/<script>([\s\S]*)<\/script>/)[1];

// Just enough DOM for the page: elements by id, divs with spans, classes.
class El {
  constructor(id) {
    this.id = id; this.children = []; this.parent = null; this.value = ""; this.checked = false;
    this.className = ""; this.text = ""; this.scrollTop = 0;
  }
  get textContent() { return this.children.length ? this.children.map(c => c.textContent).join(" ") : this.text; }
  set textContent(t) { this.text = String(t); this.children = []; }
  set innerHTML(h) {
    this.children = [];
    for (const m of h.matchAll(/<span class="([\w-]+)"><\/span>/g)) {
      const span = new El(); span.className = m[1]; this.appendChild(span);
    }
  }
  appendChild(c) { c.parent = this; this.children.push(c); return c; }
  remove() { if (this.parent) this.parent.children = this.parent.children.filter(x => x !== this); this.parent = null; }
  querySelectorAll(sel) {
    const cls = sel.replace(/^\./, ""), out = [];
    const walk = (e) => { for (const c of e.children) { if (c.className.split(" ").includes(cls)) out.push(c); walk(c); } };
    walk(this); return out;
  }
  querySelector(sel) { return this.querySelectorAll(sel)[0] || null; }
}

// fetch as a browser on `origin` does it for a cross-origin JSON POST.
async function browserFetch(url, init = {}) {
  const target = new URL(url);
  const method = init.method || "GET";
  const headers = init.headers || {};
  const crossOrigin = target.origin !== origin;
  if (crossOrigin) {
    const pre = await fetch(url, {method: "OPTIONS", headers: {
      origin, "access-control-request-method": method,
      "access-control-request-headers": Object.keys(headers).map(h => h.toLowerCase()).join(","),
    }});
    const allowed = pre.headers.get("access-control-allow-origin");
    const allowHeaders = (pre.headers.get("access-control-allow-headers") || "").toLowerCase();
    const allowMethods = (pre.headers.get("access-control-allow-methods") || "").toUpperCase();
    if (!pre.ok || (allowed !== "*" && allowed !== origin)
        || !Object.keys(headers).every(h => allowHeaders === "*" || allowHeaders.includes(h.toLowerCase()))
        || !(allowMethods === "*" || allowMethods.includes(method))) {
      throw new TypeError("Failed to fetch (blocked by CORS policy: preflight refused)");
    }
  }
  const response = await fetch(url, {...init, headers: {...headers, origin}});
  const allowed = response.headers.get("access-control-allow-origin");
  if (crossOrigin && allowed !== "*" && allowed !== origin) {
    throw new TypeError("Failed to fetch (blocked by CORS policy: no Access-Control-Allow-Origin)");
  }
  return response;
}

// One browser tab with the page loaded.
function tab(label) {
  const ids = {};
  const document = {
    getElementById: (id) => (ids[id] ??= new El(id)),
    createElement: () => new El(),
  };
  document.getElementById("server").value = "ws://127.0.0.1:8080";   // the page's default
  document.getElementById("room").value = "lobby";
  const context = vm.createContext({
    document, WebSocket: process.env.DEBUG ? class extends WebSocket { constructor(...a) { super(...a); this.addEventListener("message", e => console.error(label, "<", e.data.slice(0, 300))); } send(d) { console.error(label, ">", String(d).slice(0, 300)); super.send(d); } } : WebSocket, fetch: browserFetch, crypto: globalThis.crypto, URL,
    setTimeout, clearTimeout, console,
  });
  vm.runInContext(script, context, {filename: "index.html"});
  const $ = (id) => document.getElementById(id);
  return {
    label, $,
    join() { $("join").onclick({preventDefault() {}}); },
    type(text) { $("text").value = text; $("send").onsubmit({preventDefault() {}}); },
    status() { return $("status").textContent; },
    system() { return $("log").children.filter(c => c.className === "sys").map(c => c.textContent); },
    messages() {
      return $("log").querySelectorAll(".msg").map(m =>
        `${m.querySelector(".who").textContent}: ${m.querySelector(".text").textContent}`);
    },
    dump() { return `${label}: status=${this.status()}\n  system: ${JSON.stringify(this.system())}\n  messages: ${JSON.stringify(this.messages())}`; },
  };
}

const tabs = [];
function fail(message) {
  console.error(`FAIL: ${message}`);
  for (const t of tabs) console.error(t.dump());
  process.exit(1);
}
async function until(what, predicate, ms = 15000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const value = predicate();
    if (value) return value;
    await new Promise(r => setTimeout(r, 50));
  }
  fail(`timed out waiting for ${what}`);
}
setTimeout(() => fail("the whole scenario took longer than 90 s"), 90000).unref();

const ws = base.replace(/^http/, "ws");
const run = Date.now().toString(36);
function signIn(t, name, email, password, signup) {
  t.$("server").value = ws;
  t.$("name").value = name;
  t.$("email").value = email;
  t.$("password").value = password;
  t.$("signup").checked = signup;
  t.join();
}

const alice = tab("alice"); tabs.push(alice);
signIn(alice, "alice", `alice-${run}@example.com`, "correct horse battery", true);

if (mode === "expect-cors-refusal") {
  await until("sign-in to be refused", () => alice.system().find(l => l.includes("sign-in failed")));
  if (!alice.system().some(l => l.includes("CORS"))) fail("refused, but not by CORS");
  if (alice.status().startsWith("connected")) fail("connected although sign-in was refused");
  console.log("OK: sign-in blocked by CORS for origin " + origin);
  process.exit(0);
}

await until("alice to connect", () => alice.status().startsWith("connected as") || alice.status().startsWith("in lobby"));
const room = `web-${run}`;
// Alice's tab joined "lobby" (the default); move both to a fresh room,
// which her tab creates with her as owner.
alice.$("room").value = room; alice.join();
await until("alice to be in the new room", () => alice.status().startsWith(`in ${room}`));

const bob = tab("bob"); tabs.push(bob);
bob.$("room").value = room;
signIn(bob, "bob", `bob-${run}@example.com`, "another good password", true);
const hint = await until("bob to be told he is no member",
  () => bob.system().find(l => l.includes("not a member")));
const bobUid = hint.trim().split(" ").pop();

alice.type(`/invite ${bobUid}`);
// Bob joins again (signing in, not signing up) until the invitation has landed.
for (let attempt = 0; ; attempt++) {
  await new Promise(r => setTimeout(r, 500));
  const before = bob.system().length;
  signIn(bob, "bob", `bob-${run}@example.com`, "another good password", false);
  await until("bob to reconnect", () => bob.status().startsWith("connected as") || bob.status().startsWith("in "));
  const joined = await until("bob to be in the room or refused", () =>
    bob.status().startsWith(`in ${room}`) ? "in" :
    bob.system().slice(before).some(l => l.includes("not a member")) ? "refused" : null);
  if (joined === "in") break;
  if (attempt === 10) fail("bob never became a member");
}

alice.type("hello from the web page");
await until("bob to see alice's message", () => bob.messages().includes("alice: hello from the web page"));
bob.type("hi alice");
await until("alice to see bob's reply", () => alice.messages().includes("bob: hi alice"));
const errors = [...alice.system(), ...bob.system()].filter(l => /^[a-z-]+: /.test(l) && !l.includes("not a member"));
if (errors.length) fail(`unexpected errors: ${JSON.stringify(errors)}`);
console.log("OK: " + JSON.stringify(alice.messages()));
process.exit(0);
