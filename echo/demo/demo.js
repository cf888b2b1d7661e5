// The demo page's script: opens three sockets and shows what happened to each. Served by
// wsgate-echo; through Envoy (the allowed origin) and directly (another origin, not allowed).
"use strict";

// Opens a socket, sends `send`, and resolves with what the page saw once the last message came
// back, the socket closed, or the browser refused it.
function attempt(url, send) {
  return new Promise(resolve => {
    const seen = { opened: false, echoed: [], code: null, reason: "", blocked: false };
    const done = () => resolve(seen);
    const onViolation = e => { if (e.blockedURI.startsWith(url.split("/").slice(0, 3).join("/"))) seen.blocked = true; };
    document.addEventListener("securitypolicyviolation", onViolation);
    let ws;
    try { ws = new WebSocket(url); } catch (e) { seen.blocked = true; return done(); }
    ws.onopen = () => { seen.opened = true; send.forEach(m => ws.send(m)); };
    ws.onmessage = e => { seen.echoed.push(e.data); ws.close(1000); };
    ws.onclose = e => { seen.code = e.code; seen.reason = e.reason; setTimeout(done, 50); };
    ws.onerror = () => setTimeout(done, 500);
    setTimeout(done, 5000);
  });
}

function row(what) {
  const li = document.createElement("li");
  li.innerHTML = '<span class="what"></span><span class="seen">...</span>';
  li.querySelector(".what").textContent = what;
  document.getElementById("results").append(li);
  return (ok, text) => {
    li.className = ok === null ? "" : ok ? "ok" : "refused";
    li.querySelector(".seen").textContent = text;
  };
}

function closed(seen) {
  if (seen.blocked) return "blocked by this page's Content-Security-Policy (connect-src)";
  if (!seen.opened) return "refused at the handshake: the browser reports close code " + seen.code + " (wsgate answered 403)";
  return "closed with code " + seen.code + (seen.reason ? " and reason \"" + seen.reason + "\"" : "");
}

async function main() {
  const config = await (await fetch("/demo/config")).json();
  const onGate = location.port === config.gate.split(":").pop();
  const gate = onGate ? location.host : config.gate;
  document.getElementById("origin").textContent = location.origin;
  document.getElementById("standing").textContent = onGate
    ? "(served through Envoy and wsgate: the origin wsgate allows)"
    : "(another origin of the same site: wsgate does not allow it)";
  const other = onGate ? "http://" + config.other + "/" : "http://" + config.gate + "/";
  const elsewhere = document.getElementById("elsewhere");
  elsewhere.innerHTML = 'The same page on <a></a>.';
  elsewhere.querySelector("a").href = other;
  elsewhere.querySelector("a").textContent = other;

  const socket = row("A socket to ws://" + gate + "/ws");
  let seen = await attempt("ws://" + gate + "/ws", ["hello"]);
  socket(seen.echoed.length > 0, seen.echoed.length > 0 ? "opened, and the upstream echoed \"" + seen.echoed[0] + "\"" : closed(seen));

  const login = row("A login by first message on ws://" + gate + "/private");
  if (!config.token) {
    login(false, "no demo token: make run signs one (or give wsgate-echo WSGATE_DEMO_TOKEN from scripts/demo-token.sh)");
  } else {
    seen = await attempt("ws://" + gate + "/private", [JSON.stringify({ type: "auth", token: config.token }), "hello after login"]);
    login(seen.echoed.length > 0, seen.echoed.length > 0 ? "logged in; the upstream never saw the token, and echoed \"" + seen.echoed[0] + "\"" : closed(seen));
  }

  const csp = row("A socket to another host, ws://" + config.other + "/ws");
  if (onGate) {
    seen = await attempt("ws://" + config.other + "/ws", ["hello"]);
    csp(seen.blocked, seen.blocked ? closed(seen) : "the browser let it through: no Content-Security-Policy");
  } else {
    csp(null, "not tried: this page is not served through wsgate, so it has no Content-Security-Policy");
  }
  document.body.dataset.done = "true";
}

main();
