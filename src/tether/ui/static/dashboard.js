// tether's dashboard: live updates from server-sent events, and the cancel buttons.
// No framework and no build step: the server renders every fragment; this script
// only puts them in place.
"use strict";
(function () {
  const tokenTag = document.querySelector('meta[name="tether-token"]');
  const token = tokenTag ? tokenTag.content : "";
  const live = document.getElementById("live");
  const MAX_LINES = 20000;

  function setLive(state, text) {
    if (!live) return;
    live.dataset.state = state;
    live.textContent = text;
  }

  function flash(text, ok) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = text;
    box.className = ok ? "ok" : "error";
  }

  const source = document.body.dataset.events;
  if (source) {
    const events = new EventSource(source);
    events.onopen = () => setLive("on", "live");
    events.onerror = () => setLive("off", "reconnecting…");
    events.addEventListener("fragment", (event) => {
      const data = JSON.parse(event.data);
      const element = document.getElementById(data.id);
      if (element) element.innerHTML = data.html;
    });
    events.addEventListener("lines", (event) => {
      const data = JSON.parse(event.data);
      const element = document.getElementById(data.id);
      if (!element) return;
      const follow = element.scrollTop + element.clientHeight >= element.scrollHeight - 4;
      element.append(data.lines.join("\n") + "\n");
      element.dataset.lines = String(Number(element.dataset.lines || 0) + data.lines.length);
      if (Number(element.dataset.lines) > MAX_LINES) {
        const kept = element.textContent.split("\n").slice(-MAX_LINES);
        element.textContent = kept.join("\n");
        element.dataset.lines = String(kept.length);
      }
      if (follow) element.scrollTop = element.scrollHeight;
    });
    events.addEventListener("end", () => {
      events.close();
      setLive("done", "complete");
    });
  }

  document.addEventListener("change", (event) => {
    const select = event.target.closest("[data-autosubmit]");
    if (select && select.form) select.form.submit();
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    event.preventDefault();
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST",
        headers: { "X-Tether-Token": token },
        credentials: "same-origin",
      });
      const answer = await response.json();
      flash(answer.message, answer.ok);
    } catch (error) {
      flash("the dashboard did not answer: " + error, false);
    } finally {
      button.disabled = false;
    }
  });
})();
