// Follow a deployment without reloading: poll its status and append new events.
(function () {
  const list = document.getElementById("events");
  if (!list || list.dataset.final === "1") return;
  const badge = document.getElementById("status");
  const url = list.dataset.statusUrl;
  const finals = new Set(["live", "superseded", "stopped", "rejected", "failed", "rolled_back", "cancelled"]);
  let last = 0;
  for (const li of list.querySelectorAll("li[data-id]")) last = Math.max(last, Number(li.dataset.id));

  async function poll() {
    try {
      const response = await fetch(`${url}?after=${last}`, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const data = await response.json();
        for (const event of data.events) {
          const li = document.createElement("li");
          li.dataset.id = event.id;
          li.className = `level-${event.level}`;
          const time = document.createElement("time");
          time.dateTime = event.at;
          time.textContent = new Date(event.at).toLocaleTimeString();
          li.append(time, " ", event.message);
          list.appendChild(li);
          last = Math.max(last, event.id);
        }
        badge.textContent = data.label;
        badge.className = `badge status-${data.status} big`;
        for (const instance of data.instances) {
          const el = document.querySelector(`[data-instance="${CSS.escape(instance.name)}"]`);
          if (el) { el.textContent = instance.state; el.className = `badge status-${instance.state}`; }
        }
        if (finals.has(data.status)) {
          // Reload once to show the final page (actions, instances and logs), unless the
          // person has meanwhile followed a link: the reload must not pull them back.
          setTimeout(() => { if (!leaving) window.location.reload(); }, 800);
          return;
        }
      }
    } catch (_) { /* network hiccup: try again */ }
    setTimeout(poll, 1000);
  }
  let leaving = false;
  window.addEventListener("beforeunload", () => { leaving = true; });
  setTimeout(poll, 1000);
})();
