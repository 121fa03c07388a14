// The overview's live feed: the event bus over Server-Sent Events (/console/events).
// The session cookie authenticates the stream (same origin); the page works without it.
(function () {
  "use strict";
  var list = document.getElementById("feed");
  var state = document.getElementById("feed-state");
  if (!list || !window.EventSource) { return; }
  var MAX_ITEMS = 200;
  var HIDDEN = { id: true, kind: true, at: true };

  function summary(event) {
    var parts = [];
    Object.keys(event).forEach(function (key) {
      if (HIDDEN[key]) { return; }
      var value = event[key];
      if (value !== null && typeof value === "object") { value = JSON.stringify(value); }
      parts.push(key + "=" + value);
    });
    return parts.join(" ");
  }

  function show(event) {
    var item = document.createElement("li");
    item.dataset.kind = event.kind;
    var when = document.createElement("time");
    var at = new Date(event.at * 1000);
    when.dateTime = at.toISOString();
    when.textContent = at.toLocaleTimeString();
    var kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = event.kind;
    var rest = document.createElement("span");
    rest.textContent = summary(event);  // textContent: event data is never parsed as HTML
    item.append(when, kind, rest);
    list.prepend(item);
    while (list.children.length > MAX_ITEMS) { list.lastElementChild.remove(); }
  }

  var source = new EventSource(list.dataset.src);
  state.textContent = "Connecting…";
  source.onopen = function () { state.textContent = "Live: new events appear below."; state.dataset.live = "1"; };
  source.onerror = function () { state.textContent = "Disconnected; reconnecting…"; delete state.dataset.live; };
  source.onmessage = function (message) {
    try { show(JSON.parse(message.data)); } catch (e) { /* a malformed message is skipped */ }
  };
})();
