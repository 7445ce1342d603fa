// The game-day console (harness/loadgen/console.py): plain JS and SVG, no build step.
// Redraws from api/state every second and api/verdicts every few seconds.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var csrf = null;            // the session's CSRF token (memory only; the cookie is HttpOnly)
  var authorized = false;
  var kindsShown = "";
  var lastState = null;

  function $(id) { return document.getElementById(id); }

  function api(path, body) {
    var opts = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      if (csrf) opts.headers["X-LLM-Chaos-CSRF"] = csrf;
      opts.body = JSON.stringify(body);
    }
    return fetch("api/" + path, opts).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (!resp.ok) throw new Error(data.error || (resp.status + " " + resp.statusText));
        return data;
      });
    });
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svgEl(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function say(message, isError) {
    var p = $("fault-message");
    p.textContent = message;
    p.className = isError ? "error" : "";
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "" : Number(value).toFixed(digits || 0);
  }

  // -- timeline --------------------------------------------------------------------------

  function drawChart(svg, state, keys, scale) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var width = svg.clientWidth || 800;
    var height = svg.clientHeight || 150;
    var left = 48, right = 8, top = 6, bottom = 16;
    var series = state.series || { t: [] };
    var bucket = state.bucket_s || 2;
    var horizon = state.plan ? state.plan.horizon : 0;
    var tmax = Math.max(horizon, state.now, (series.t.length ? series.t[series.t.length - 1] + bucket : 0), 10);
    var vmax = 0;
    keys.forEach(function (k) {
      (series[k] || []).forEach(function (v) { if (v !== null && v * scale > vmax) vmax = v * scale; });
    });
    vmax = vmax > 0 ? vmax * 1.15 : 1;
    var x = function (t) { return left + (width - left - right) * t / tmax; };
    var y = function (v) { return top + (height - top - bottom) * (1 - v / vmax); };
    var windows = (state.windows || []).map(function (w) {
      return { start: w.start, end: w.end === null ? state.now : w.end, inject: w.inject, fault: w.fault,
               cls: w.end === null ? "window active" : "window" };
    });
    (state.planned || []).forEach(function (p) {
      if (p.start > state.now) windows.push({ start: p.start, end: p.end, inject: "", fault: p.fault, cls: "window planned" });
    });
    windows.forEach(function (w) {
      var rect = svgEl("rect", { "class": w.cls, x: x(w.start), y: top, "data-inject": w.inject,
        "data-fault": w.fault, "data-start": w.start, "data-end": w.end,
        width: Math.max(1, x(w.end) - x(w.start)), height: height - top - bottom });
      var tip = svgEl("title", {});
      tip.textContent = w.fault + " " + fmt(w.start, 1) + "-" + fmt(w.end, 1) + " s";
      rect.appendChild(tip);
      svg.appendChild(rect);
    });
    svg.appendChild(svgEl("line", { "class": "axis", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
    svg.appendChild(svgEl("line", { "class": "axis", x1: left, x2: left, y1: top, y2: y(0) }));
    var label = svgEl("text", { x: 2, y: top + 9 });
    label.textContent = fmt(vmax, vmax < 10 ? 1 : 0) + " " + svg.getAttribute("data-unit");
    svg.appendChild(label);
    var step = tmax > 300 ? 60 : tmax > 120 ? 30 : tmax > 40 ? 10 : 5;
    for (var t = 0; t <= tmax; t += step) {
      var tick = svgEl("text", { x: x(t) - 6, y: height - 3 });
      tick.textContent = t + "s";
      svg.appendChild(tick);
    }
    keys.forEach(function (k) {
      var values = series[k] || [];
      var points = [];
      values.forEach(function (v, i) {
        if (v !== null) points.push(x(series.t[i] + bucket / 2).toFixed(1) + "," + y(v * scale).toFixed(1));
      });
      svg.appendChild(svgEl("polyline", { "class": k, "data-series": k, points: points.join(" "),
        "data-values": JSON.stringify(values), "data-t": JSON.stringify(series.t) }));
    });
    if (state.status !== "ready") {
      svg.appendChild(svgEl("line", { "class": "now", x1: x(state.now), x2: x(state.now), y1: top, y2: y(0) }));
    }
  }

  function drawTimeline(state) {
    drawChart($("chart-latency"), state, ["ttft_p50", "ttft_p95", "itl_p95"], 1);
    drawChart($("chart-errors"), state, ["error_rate"], 100);
    drawChart($("chart-tokens"), state, ["tokens_per_s"], 1);
    $("timeline-note").textContent = state.series
      ? "points of " + state.bucket_s + " s; requests by the time they were sent"
      : "starts with the test";
  }

  // -- faults ----------------------------------------------------------------------------

  function faultTarget(a) {
    if (a.workers && a.workers.length) return a.workers.join(", ");
    var placed = (a.value && a.value.faults) || [];
    if (placed.length) return placed.map(function (f) { return f.target; }).join(", ");
    return (a.value && (a.value.proxy || a.value.container)) || "";
  }

  var faultsShown = "";

  function drawFaults(state) {
    var body = $("active-faults").querySelector("tbody");
    var since = {};
    (state.windows || []).forEach(function (w) { since[w.inject] = w.start; });
    var shown = JSON.stringify([authorized, (state.active || []).map(function (a) {
      return [a.inject, a.fault, faultTarget(a), since[a.inject], a.by];
    })]);
    if (shown === faultsShown) {
      // the same faults: only their TTL moves (rows kept, so a Revert click is never lost)
      (state.active || []).forEach(function (a, i) {
        var row = body.rows[i];
        if (row) row.cells[3].textContent = a.left === null ? "" : fmt(a.left, 0) + " s";
      });
    } else {
      faultsShown = shown;
      while (body.firstChild) body.removeChild(body.firstChild);
      (state.active || []).forEach(function (a) { body.appendChild(faultRow(a, since)); });
    }
    drawForms(state);
  }

  function faultRow(a, since) {
    var row = el("tr", { "data-inject": a.inject, "data-fault": a.fault });
    row.appendChild(el("td", {}, a.fault));
    row.appendChild(el("td", {}, faultTarget(a)));
    row.appendChild(el("td", {}, since[a.inject] !== undefined ? fmt(since[a.inject], 1) + " s" : ""));
    row.appendChild(el("td", {}, a.left === null ? "" : fmt(a.left, 0) + " s"));
    row.appendChild(el("td", {}, a.by));
    var cell = el("td", {});
    if (authorized) {
      var button = el("button", { type: "button", "class": "revert", "data-inject": a.inject }, "Revert");
      button.addEventListener("click", function () { revert(a.inject, button); });
      cell.appendChild(button);
    }
    row.appendChild(cell);
    return row;
  }

  function drawForms(state) {
    $("no-faults").hidden = (state.active || []).length > 0;
    var usable = state.plan && state.plan.token_needed && (state.kinds || []).length;
    $("login-form").hidden = authorized || !usable;
    $("inject-form").hidden = !authorized || !usable;
    if (!state.plan) say("no chaos plan: start Locust with --chaos-plan EXP.yaml to drive faults");
    else if (!state.plan.token_needed) say("this run has no admin token: faults cannot be driven by hand");
    var kinds = JSON.stringify(state.kinds || []);
    if (kinds !== kindsShown) { kindsShown = kinds; buildKinds(state.kinds || []); }
  }

  function buildKinds(kinds) {
    var select = $("inject-kind");
    var chosen = select.value;
    while (select.firstChild) select.removeChild(select.firstChild);
    kinds.forEach(function (k) { select.appendChild(el("option", { value: k.kind }, k.kind)); });
    if (chosen) select.value = chosen;
    buildFields();
  }

  function buildFields() {
    var kind = $("inject-kind").value;
    var spec = (JSON.parse(kindsShown || "[]")).filter(function (k) { return k.kind === kind; })[0];
    var box = $("inject-fields");
    while (box.firstChild) box.removeChild(box.firstChild);
    (spec ? spec.fields : []).forEach(function (f) {
      var label = el("label", {}, f.name + (f.name === "for" ? " (s)" : ""));
      var input;
      if (f.type === "choice") {
        input = el("select", {});
        f.choices.forEach(function (c) { input.appendChild(el("option", { value: c }, c)); });
        input.value = f["default"];
      } else {
        input = el("input", { type: f.type === "number" ? "number" : "text", step: "any" });
        input.value = f["default"] === null ? "" : f["default"];
        if (f.name === "workers") input.placeholder = "any (ids, comma-separated)";
      }
      input.id = "inject-field-" + f.name;
      input.name = f.name;
      input.setAttribute("data-type", f.type);
      label.appendChild(input);
      box.appendChild(label);
    });
  }

  function injectForm() {
    var form = { kind: $("inject-kind").value };
    $("inject-fields").querySelectorAll("input, select").forEach(function (input) {
      var v = input.value.trim();
      if (v === "") return;
      form[input.name] = input.getAttribute("data-type") === "number" ? Number(v) : v;
    });
    return form;
  }

  function revert(inject, button) {
    button.disabled = true;
    api("revert", { inject: inject }).then(function () {
      say("reverted " + inject);
      refresh();
    }, function (err) { button.disabled = false; say("revert: " + err.message, true); });
  }

  // -- fleet and verdicts ------------------------------------------------------------------

  function drawFleet(state) {
    var body = $("fleet").querySelector("tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    (state.fleet.workers || []).forEach(function (w) {
      var row = el("tr", { "data-worker": w.id, "data-state": w.state });
      [w.id, w.state, w.pid, fmt(w.private_mib, 1), w.ongoing, w.restarts].forEach(function (v) {
        row.appendChild(el("td", {}, v));
      });
      body.appendChild(row);
    });
    var list = $("events");
    while (list.firstChild) list.removeChild(list.firstChild);
    (state.fleet.events || []).forEach(function (e) {
      var extra = Object.keys(e).filter(function (k) { return ["seq", "time", "type"].indexOf(k) < 0; })
        .map(function (k) { return k + "=" + (typeof e[k] === "object" ? JSON.stringify(e[k]) : e[k]); }).join(" ");
      list.appendChild(el("li", { "data-event": e.type }, new Date(e.time * 1000).toLocaleTimeString() + " " + e.type + " " + extra));
    });
  }

  function drawVerdicts(v) {
    var body = $("verdicts").querySelector("tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    (v.checks || []).forEach(function (c) {
      var row = el("tr", { "data-check": c.name, "data-verdict": c.verdict });
      row.appendChild(el("td", {}, c.name));
      row.appendChild(el("td", { "class": "verdict-" + c.verdict }, c.verdict));
      row.appendChild(el("td", {}, c.summary));
      body.appendChild(row);
    });
    $("verdicts").setAttribute("data-final", v.final ? "true" : "false");
    $("verdicts-note").textContent = v.note ? v.note : v.final
      ? "final: " + v.verdict + " (exit " + v.exit_code + ")"
      : "so far, over the run directory as it stands" + (v.requests !== undefined ? " (" + v.requests + " requests)" : "");
    var report = $("report");
    while (report.firstChild) report.removeChild(report.firstChild);
    if (v.final && v.report) {
      report.appendChild(el("a", { id: "report-link", href: "report.html", target: "_blank" }, "report.html"));
    }
  }

  // -- loops -------------------------------------------------------------------------------

  function refresh() {
    return api("state").then(function (state) {
      lastState = state;
      authorized = state.authorized && csrf !== null;
      $("plan-name").textContent = state.plan ? (state.plan.name || "") + " (seed " + state.plan.seed + ")" : "";
      var status = $("status");
      status.setAttribute("data-status", state.status);
      status.textContent = state.status + (state.status === "ready" ? ": start the test in Locust"
        : " " + fmt(state.now, 0) + " s" + (state.plan ? " of " + fmt(state.plan.horizon, 0) + " s" : ""));
      drawTimeline(state);
      drawFaults(state);
      drawFleet(state);
    }).catch(function (err) { $("status").textContent = "console unreachable: " + err.message; });
  }

  function refreshVerdicts() {
    return api("verdicts").then(drawVerdicts).catch(function () {});
  }

  $("login-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var input = $("login-token");
    api("login", { token: input.value }).then(function (data) {
      input.value = "";
      csrf = data.csrf;
      authorized = true;
      say("unlocked: inject and revert");
      refresh();
    }, function (err) { input.value = ""; say("token: " + err.message, true); });
  });

  $("inject-kind").addEventListener("change", buildFields);

  $("inject-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var button = $("inject-submit");
    button.disabled = true;
    api("inject", injectForm()).then(function (data) {
      say("injected " + $("inject-kind").value + " (" + data.inject + ")");
      button.disabled = false;
      refresh();
    }, function (err) { button.disabled = false; say("inject: " + err.message, true); });
  });

  api("session").then(function (s) { if (s.authorized) { csrf = s.csrf; authorized = true; } })
    .finally(function () {
      refresh();
      refreshVerdicts();
      window.setInterval(refresh, 1000);
      window.setInterval(refreshVerdicts, 3000);
    });
})();
