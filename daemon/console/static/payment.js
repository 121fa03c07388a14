// A payment's page follows the payment: on each bus event about it (and once the stream
// is open, for what happened before) it fetches its own page again and swaps in the
// parts marked data-live — status, amounts, refunds and history, and the action forms
// unless the operator is typing in one. Without JS the page is the same, only static.
(function () {
  "use strict";
  var marker = document.querySelector("[data-payment-id]");
  if (!marker || !window.EventSource || !window.fetch) { return; }
  var paymentId = marker.dataset.paymentId;
  var pending = false;

  function busy(region) {
    if (region.contains(document.activeElement) && document.activeElement !== document.body) {
      return true;
    }
    return Array.prototype.some.call(
      region.querySelectorAll("input:not([type=hidden])"),
      function (input) { return input.value !== ""; }
    );
  }

  function refresh() {
    if (pending) { return; }
    pending = true;
    fetch(window.location.pathname, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (region) {
          var name = region.dataset.live;
          var next = fresh.querySelector('[data-live="' + name + '"]');
          if (!next || (name === "actions" && busy(region))) { return; }
          if (next.innerHTML !== region.innerHTML) {
            region.replaceChildren.apply(region, Array.from(next.childNodes));
          }
        });
      })
      .catch(function () { /* the next event tries again */ })
      .finally(function () { pending = false; });
  }

  var source = new EventSource(marker.dataset.src);
  source.onopen = refresh;
  source.onmessage = function (message) {
    try {
      var event = JSON.parse(message.data);
      if (event.payment_id === paymentId) { refresh(); }
    } catch (e) { /* a malformed message is skipped */ }
  };
})();
