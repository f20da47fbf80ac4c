// Runs examples/chat/web/index.html in a real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core) against a live `hearth serve`:
// two users, each in their own browser context (separate storage and
// sockets: two people), sign up through the page's form, the first invites
// the second with the page's `/invite <uid>` line, and messages typed on each
// page appear in the other page's DOM. A third context opens the page from an
// origin the server's CORS config does not list and must be refused sign-in
// by the browser itself.
//
//   node browser_page.mjs <http://hearth-server> <page URL> <page URL of an unlisted origin>
//
// Both page URLs serve examples/chat/web (the README's
// `python3 -m http.server -d examples/chat/web 8000`): the first from an
// origin the server's [http.cors] allowed_origins lists
// (http://127.0.0.1:8000 with examples/chat/hearth.toml), the second from
// one it does not. (The page must really be served from a loopback address:
// Chromium's Local Network Access checks refuse a page that did not come
// from loopback the right to call the loopback server.)
//
// Environment: CHROMIUM (default /usr/bin/chromium), SCREENSHOT (a PNG path:
// a screenshot of the first user's page once both have chatted), DEBUG (print
// the pages' console).
// Exits 0 on success, 1 with a description of the pages on failure, 2 on
// bad usage. Closes the browser on every path; gives up after 90 s.
// Used by web_page_browser.rs; playwright-core comes from
// sdk-spec/reference/js/node_modules (`npm ci` there).

import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const [base, pageUrl, unlistedUrl] = process.argv.slice(2);
if (!base || !pageUrl || !unlistedUrl) {
  console.error("usage: browser_page.mjs <http://hearth-server> <page URL> <page URL of an unlisted origin>");
  process.exit(2);
}
const require = createRequire(new URL("../../../sdk-spec/reference/js/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const run = Date.now().toString(36);
const room = `browser-${run}`;
const ws = base.replace(/^http/, "ws");

// The server restart is the caller's: this script prints `CONTROL <what>` on
// stdout and waits for a line on stdin saying it is done.
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function control(what) {
  console.log(`CONTROL ${what}`);
  const answer = await stdinLines.next();
  if (answer.done || answer.value.trim() !== "done") await fail(`the caller did not ${what} (${JSON.stringify(answer.value)})`);
}

let browser = null;
const pages = [];
const problems = []; // uncaught page errors: any one fails the test
const consoleErrors = []; // what the browser logged as errors, e.g. a CORS refusal

async function describe() {
  const out = [];
  for (const { label, page } of pages) {
    try {
      const state = await page.evaluate(() => ({
        status: document.getElementById("status").textContent,
        log: [...document.getElementById("log").children].map((d) => `[${d.className}] ${d.textContent}`),
      }));
      out.push(`${label}: status=${JSON.stringify(state.status)}\n  ${state.log.join("\n  ")}`);
    } catch (e) {
      out.push(`${label}: (could not read the page: ${e.message})`);
    }
  }
  return out.join("\n");
}

async function fail(message) {
  console.error(`FAIL: ${message}`);
  console.error(await describe());
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}

setTimeout(() => { fail("the whole scenario took longer than 90 s"); }, 90_000).unref();

/** A new browser context (a separate user) with one page on `url`. */
async function openPage(label, url) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 420 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on("pageerror", (e) => problems.push(`${label}: uncaught ${e.message}`));
  page.on("response", (r) => {
    // The page has no icon: the browser's request for one is answered 404.
    if (r.status() >= 400 && new URL(r.url()).pathname !== "/favicon.ico")
      problems.push(`${label}: HTTP ${r.status()} for ${r.url()}`);
  });
  page.on("console", (m) => {
    // "Failed to load resource" repeats a failed request (seen above, or below as a CORS refusal).
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) consoleErrors.push(`${label}: ${m.text()}`);
    if (process.env.DEBUG) console.error(`${label} console.${m.type()}: ${m.text()}`);
  });
  await page.goto(url);
  pages.push({ label, page });
  return page;
}

/** Fills the page's form as a user would and presses Join. */
async function signIn(page, { name, email, password, signup }) {
  await page.fill("#server", ws);
  await page.fill("#name", name);
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.fill("#room", room);
  await page.setChecked("#signup", signup);
  await page.click("#join");
}

/** Waits until `fn(arg)`, run in the page, is truthy; returns its value. */
async function until(page, what, fn, arg, ms = 20_000) {
  try {
    return await (await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 })).jsonValue();
  } catch (e) {
    return fail(`timed out waiting for ${what} (${e.message.split("\n")[0]})`);
  }
}

const systemLines = () => [...document.querySelectorAll("#log .sys")].map((d) => d.textContent);
/** The messages a page shows, as "who: text". */
async function messages(page) {
  return page.$$eval("#log .msg", (divs) =>
    divs.map((d) => `${d.querySelector(".who").textContent}: ${d.querySelector(".text").textContent}`));
}
async function type(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter"); // submits the form, as a user would
}
async function seesMessage(page, label, line) {
  await until(page, `${label} to see "${line}"`, (l) =>
    [...document.querySelectorAll("#log .msg")].some(
      (d) => `${d.querySelector(".who").textContent}: ${d.querySelector(".text").textContent}` === l), line);
}

try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout: 30_000,
    // Playwright gives every launch a fresh temporary profile (--user-data-dir).
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });

  // Alice signs up from the README's origin; her page creates the room with her as owner.
  const alice = await openPage("alice", pageUrl);
  await signIn(alice, { name: "alice", email: `alice-${run}@example.com`, password: "correct horse battery", signup: true });
  await until(alice, "alice to be in the room",
    (r) => document.getElementById("status").textContent.startsWith(`in ${r}`), room);

  // Bob signs up in his own browser context and is told he is no member.
  const bob = await openPage("bob", pageUrl);
  await signIn(bob, { name: "bob", email: `bob-${run}@example.com`, password: "another good password", signup: true });
  const hint = await until(bob, "bob to be told he is no member",
    () => [...document.querySelectorAll("#log .sys")].map((d) => d.textContent).find((l) => l.includes("not a member")));
  const bobUid = hint.trim().split(" ").pop();

  // Alice invites him with the page's command line.
  await type(alice, `/invite ${bobUid}`);

  // Bob presses Join again (the page unticked "new account" after signing up)
  // until the invitation has landed.
  for (let attempt = 0; ; attempt++) {
    await new Promise((r) => setTimeout(r, 300));
    if (await bob.isChecked("#signup")) await fail("the page did not untick 'new account' after signing up");
    const before = await bob.$$eval("#log .sys", (d) => d.length);
    await bob.click("#join");
    const joined = await until(bob, "bob to be in the room or refused", ([r, n]) =>
      document.getElementById("status").textContent.startsWith(`in ${r}`) ? "in"
        : [...document.querySelectorAll("#log .sys")].slice(n).some((d) => d.textContent.includes("not a member")) ? "refused" : null,
    [room, before]);
    if (joined === "in") break;
    if (attempt === 10) await fail("bob never became a member");
  }

  // Each types a line; it appears live on the other's page.
  await type(alice, "hello from alice's browser");
  await seesMessage(bob, "bob", "alice: hello from alice's browser");
  await type(bob, "hi alice <b>not bold</b>");
  await seesMessage(alice, "alice", "bob: hi alice <b>not bold</b>");
  // Text is shown as text, never parsed as HTML.
  if (await alice.$$eval("#log .msg b", (b) => b.length)) await fail("a message's text was rendered as HTML");
  for (const [label, page] of [["alice", alice], ["bob", bob]]) {
    const seen = await messages(page);
    const want = ["alice: hello from alice's browser", "bob: hi alice <b>not bold</b>"];
    if (JSON.stringify(seen) !== JSON.stringify(want)) await fail(`${label}'s page shows ${JSON.stringify(seen)}, want ${JSON.stringify(want)} in that order`);
    const errors = (await page.evaluate(systemLines)).filter((l) => /^[a-z-]+: /.test(l) && !l.includes("not a member"));
    if (errors.length) await fail(`${label}'s page shows errors: ${JSON.stringify(errors)}`);
  }
  // The server is killed (kill -9) and started again on the same port and
  // data. Meanwhile Alice types a line; both pages reconnect by themselves,
  // resume the room, and her line is sent and shown once.
  await control("kill-server");
  for (const [label, page] of [["alice", alice], ["bob", bob]])
    await until(page, `${label}'s page to notice the server is gone`,
      () => document.getElementById("status").textContent.startsWith("disconnected"));
  await type(alice, "typed while the server was down");
  await control("restart-server");
  for (const [label, page] of [["alice", alice], ["bob", bob]]) {
    await until(page, `${label}'s page to be back in the room`,
      (r) => document.getElementById("status").textContent.startsWith(`in ${r}`), room, 30_000);
    await seesMessage(page, label, "alice: typed while the server was down");
  }
  // A moment for a duplicate to show up, if the resend were applied twice.
  await new Promise((r) => setTimeout(r, 500));
  const want = ["alice: hello from alice's browser", "bob: hi alice <b>not bold</b>", "alice: typed while the server was down"];
  for (const [label, page] of [["alice", alice], ["bob", bob]]) {
    const seen = await messages(page);
    if (JSON.stringify(seen) !== JSON.stringify(want)) await fail(`after the restart ${label}'s page shows ${JSON.stringify(seen)}, want ${JSON.stringify(want)}`);
  }
  await type(bob, "and back again");
  await seesMessage(alice, "alice", "bob: and back again");
  for (const [label, page] of [["alice", alice], ["bob", bob]]) {
    const errors = (await page.evaluate(systemLines)).filter((l) => /^[a-z-]+: /.test(l) && !l.includes("not a member"));
    if (errors.length) await fail(`after the restart ${label}'s page shows errors: ${JSON.stringify(errors)}`);
  }
  if (process.env.SCREENSHOT) await alice.screenshot({ path: process.env.SCREENSHOT });

  // From an origin the config does not list, the browser blocks the
  // sign-in request and the page says so.
  const stranger = await openPage("stranger", unlistedUrl);
  await signIn(stranger, { name: "carol", email: `carol-${run}@example.com`, password: "a third good password", signup: true });
  const refused = await until(stranger, "sign-in from an unlisted origin to be refused",
    () => [...document.querySelectorAll("#log .sys")].map((d) => d.textContent).find((l) => l.includes("sign-in failed")));
  if (!refused.includes("allowed_origins")) await fail(`refused, but the page does not point at CORS: ${refused}`);
  if (await stranger.evaluate(() => document.getElementById("status").textContent.startsWith("connected")))
    await fail("connected although sign-in was refused");
  // Refused by CORS (the server's answer names no such origin), not by anything else.
  const cors = consoleErrors.filter((l) => l.startsWith("stranger: ") && l.includes("has been blocked by CORS policy"));
  if (!cors.length || cors.some((l) => l.includes("address space")))
    await fail(`the browser did not refuse sign-in for CORS: ${JSON.stringify(consoleErrors)}`);
  // While the server was down, the pages' reconnection attempts were refused.
  const others = consoleErrors.filter((l) => !l.startsWith("stranger: ") && !l.includes("net::ERR_CONNECTION_REFUSED"));
  if (others.length) await fail(`errors in the users' consoles: ${JSON.stringify(others)}`);

  if (problems.length) await fail(`errors in the pages: ${problems.join("; ")}`);
  console.log(`OK: ${JSON.stringify(await messages(alice))}; sign-in from ${new URL(unlistedUrl).origin} refused by the browser`);
  await browser.close();
  process.exit(0);
} catch (e) {
  await fail(e.stack || String(e));
}
