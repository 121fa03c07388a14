// A payment's page follows the payment: on each bus event about it (and once the stream
// is open, for what happened before) it fetches its own page again and swaps in the
// parts marked data-live — status, amounts, refunds and history, and the action forms
// when the actions on offer changed and the operator is not filling one in. Without JS the page is the same, only static.
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

  // Which actions a region offers, and for how much: its forms and their amount hints (not
  // their idempotency keys, fresh on every rendering).
  function offered(region) {
    return Array.prototype.map.call(
      region.querySelectorAll("form[data-test-id]"),
      function (form) {
        var amount = form.querySelector("input[name=amount]");  // its placeholder: what is left
        return form.dataset.testId + (amount ? "=" + amount.placeholder : "");
      }
    ).join(" ") + "|" + (region.querySelector("[data-test-id=no-actions]") ? "none" : "");
  }

  function changed(name, region, next) {
    if (name === "actions") { return offered(next) !== offered(region) && !busy(region); }
    return next.innerHTML !== region.innerHTML;
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
          if (next && changed(name, region, next)) {
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
