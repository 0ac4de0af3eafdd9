// Refreshes the live part of a dashboard page every few seconds, in place.
// The server renders (and escapes) everything; this only swaps its fresh HTML in.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !live.dataset.refresh) return;
  const every = Number(live.dataset.refresh) || 3000;
  async function refresh() {
    try {
      const answer = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401) { location.reload(); return; }  // signed out: show the form
      if (!answer.ok) return;
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById("live");
      const current = document.getElementById("live");
      if (fresh && current) current.replaceWith(document.importNode(fresh, true));
    } catch (err) {
      // Offline or restarting: try again on the next tick.
    }
  }
  setInterval(refresh, every);
})();
