// Shared by the unit tests: a scripted fake of the WebSocket API and polling helpers.
// (Not a test file itself: the runner takes `*.test.mjs`.)
import { parseJSON, stringifyJSON } from '../hearth-client.mjs';

/**
 * A scripted fake of the browser WebSocket API, speaking hearth.v1 (JSON).
 * `onSend` sees every frame the client sends, as it is sent.
 */
export function fakeNetwork(onSend = () => {}) {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.protocol = protocols[0];
      this.sent = [];
      this.closed = false;
      sockets.push(this);
      setTimeout(() => this.onopen && this.onopen({}), 0);
    }
    send(data) { const f = parseJSON(data); onSend(f); this.sent.push(f); }
    close() { this.drop(1000); }
    /** server side */
    frame(obj) { this.onmessage && this.onmessage({ data: stringifyJSON(obj) }); }
    drop(code = 1006, reason = '') {
      if (this.closed) return;
      this.closed = true;
      setTimeout(() => this.onclose && this.onclose({ code, reason }), 0);
    }
    welcome(extra = {}) {
      this.frame({
        type: 'welcome', session_id: 's', server_time: '2026-01-01T00:00:00.000000000Z', protocol: 1,
        heartbeat_ms: 25000, idle_timeout_ms: 60000,
        limits: { max_subscriptions: 100, max_frame_bytes: 2097152, max_inflight_writes: 32, max_pending_events: 128, max_queued_bytes: 16777216 },
        uid: null, admin: true, expires_at: null, ...extra,
      });
    }
    sentOf(type) { return this.sent.filter((f) => f.type === type); }
  }
  return { FakeWebSocket, sockets };
}

export const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
export async function until(cond, what, ms = 3000) {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await tick();
  }
}
