// A task's page follows the task: on each bus event about it (and once the stream is
// open, for what happened before) it fetches its own page again and swaps the main
// content in if the task moved. Without JS the page is the same, only static.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var marker = document.querySelector("[data-task-id]");
  if (!main || !marker || !window.EventSource || !window.fetch) { return; }
  var taskId = Number(marker.dataset.taskId);
  var pending = false;

  function stateOf(root) {
    var node = root.querySelector("[data-test-id=task-state]");
    return node ? node.textContent.trim() : "";
  }

  function refresh() {
    if (pending) { return; }
    pending = true;
    fetch(window.location.pathname, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        if (fresh && stateOf(fresh) !== stateOf(main)) {
          main.replaceChildren.apply(main, Array.from(fresh.childNodes));
        }
      })
      .catch(function () { /* the next event tries again */ })
      .finally(function () { pending = false; });
  }

  var source = new EventSource(marker.dataset.src);
  source.onopen = refresh;
  source.onmessage = function (message) {
    try {
      var event = JSON.parse(message.data);
      if (event.task_id === taskId && String(event.kind).indexOf("task.") === 0) { refresh(); }
    } catch (e) { /* a malformed message is skipped */ }
  };
})();
