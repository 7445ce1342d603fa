// Added to Locust's web UI page by harness/loadgen/console.py: shows the game-day console in
// the "Chaos" tab. Locust's React UI draws only tables in an extra tab, so the console (its
// own page, same origin) is a frame laid over the empty tab panel, below the tab bar, while
// that tab is selected. The frame lives outside React's tree, so a re-render of Locust's page
// never reloads it.
(function () {
  "use strict";
  var consoleUrl = document.currentScript.src.replace(/assets\/tab\.js.*$/, "");
  var host = document.createElement("div");
  var frame = document.createElement("iframe");
  host.id = "llm-chaos-tab";
  host.style.cssText = "position:absolute;display:none;z-index:1;";
  frame.id = "llm-chaos-console";
  frame.title = "llm-chaos game-day console";
  frame.src = consoleUrl + "?embedded=1";
  frame.style.cssText = "width:100%;border:0;min-height:600px;display:block;";
  host.appendChild(frame);
  document.body.appendChild(host);

  function place() {
    var chaos = new URLSearchParams(window.location.search).get("tab") === "chaos";
    var tablist = chaos && document.querySelector('[role="tablist"]');
    var bar = tablist && tablist.closest(".MuiTabs-root");
    if (!bar) {
      host.style.display = "none";
      return;
    }
    var box = bar.getBoundingClientRect();
    host.style.top = (box.bottom + window.scrollY + 16) + "px";
    host.style.left = (box.left + window.scrollX) + "px";
    host.style.width = box.width + "px";
    host.style.display = "";
    try {  // same origin: fit the frame to the console's height
      var doc = frame.contentDocument;
      if (doc && doc.documentElement) {
        frame.style.height = (doc.documentElement.scrollHeight + 8) + "px";
      }
    } catch (e) { /* not loaded yet */ }
  }

  window.setInterval(place, 250);
})();
