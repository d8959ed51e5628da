// Keeps a dashboard page live: the server renders every fragment, this only puts it in place.
// `main` events replace the page's <main>; `log` events append lines, as text, to the run's log.
"use strict";
(function () {
  const url = document.body.dataset.events;
  if (!url || !window.EventSource) return;
  const source = new EventSource(url);
  const status = document.createElement("span");
  status.className = "live";
  status.textContent = "live";
  document.querySelector("header").append(status);
  source.addEventListener("main", (event) => {
    document.getElementById("live").innerHTML = event.data;
  });
  source.addEventListener("log", (event) => {
    const log = document.getElementById("log");
    if (!log) return;
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    for (const line of JSON.parse(event.data)) log.append(line + "\n");
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("end", () => {
    source.close();
    status.textContent = "finished";
    status.className = "live ended";
  });
  source.onerror = () => {
    status.textContent = source.readyState === EventSource.CLOSED ? "offline" : "reconnecting";
  };
  source.onopen = () => {
    status.textContent = "live";
  };
})();
