// The hosted checkout page (daemon/checkout/templates/checkout.html).
//
// It learns the payment's state from one Server-Sent Events stream (never by polling)
// and, when embedded by the SDK, tells the embedding page the outcome by postMessage,
// addressed to the one origin its signed link names: any other parent gets nothing.
(function () {
  "use strict";
  var root = document.getElementById("checkout");
  if (!root) return;
  var parentOrigin = root.getAttribute("data-parent-origin") || "";
  var embedded = parentOrigin !== "" && window.parent !== window;
  var statusEl = document.getElementById("checkout-status");
  var errorEl = document.getElementById("checkout-error");
  var choices = document.getElementById("checkout-choices");
  var stripe = document.getElementById("checkout-stripe");
  var TEXT = {
    created: "Preparing the payment\u2026",
    pending: "Waiting for your payment",
    requires_action: "Waiting for your payment (an extra step is needed)",
    processing: "Processing\u2026",
    unknown: "Processing\u2026",
    requires_capture: "Paid: authorized",
    succeeded: "Paid",
    failed: "Declined",
    canceled: "Cancelled",
    expired: "Expired"
  };
  var finished = false;

  function tell(message) {
    if (!embedded) return;
    message.source = "paymentd";
    window.parent.postMessage(message, parentOrigin);
  }

  function setOpen(open) {
    if (!choices) return;
    var buttons = choices.querySelectorAll("button");
    for (var i = 0; i < buttons.length; i++) buttons[i].disabled = !open;
  }

  function show(state) {
    root.setAttribute("data-status", state.status);
    var text = TEXT[state.status] || state.status;
    if (state.status === "failed" && state.failure_message) text += ": " + state.failure_message;
    statusEl.textContent = text;
    setOpen(state.status === "pending" || state.status === "requires_action");
    if (stripe && state.hosted_url && !state.outcome) {
      stripe.href = state.hosted_url;
      stripe.hidden = false;
    }
    if (stripe && state.outcome) stripe.hidden = true;
    if (state.outcome && !finished) {
      finished = true;
      events.close(); // the outcome is final: no reconnection
      tell({
        type: "result",
        outcome: state.outcome,
        payment: {
          id: state.id,
          status: state.status,
          amount: state.amount,
          currency: state.currency,
          amount_display: state.amount_display,
          failure_code: state.failure_code,
          failure_message: state.failure_message
        }
      });
    }
  }

  setOpen(false); // until the stream says the payment waits for the customer
  var events = new EventSource(root.getAttribute("data-events"));
  events.addEventListener("status", function (e) {
    show(JSON.parse(e.data));
  });
  events.addEventListener("error", function () {
    // A lost connection is retried by the browser itself; a refusal (expired link, too
    // many streams) closes the stream for good.
    if (!finished && events.readyState === EventSource.CLOSED) {
      errorEl.textContent = "Live updates stopped: reload the page to see where the payment stands.";
      errorEl.hidden = false;
    }
  });

  function submit(e) {
    e.preventDefault();
    var form = e.currentTarget;
    errorEl.hidden = true;
    setOpen(false);
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      headers: { Accept: "application/json" },
      credentials: "same-origin"
    }).then(function (response) {
      if (response.ok) return; // the stream brings the outcome
      return response.json().then(function (problem) {
        errorEl.textContent = problem.detail || "The payment could not be sent.";
        errorEl.hidden = false;
      });
    }, function () {
      errorEl.textContent = "The payment could not be sent: check your connection.";
      errorEl.hidden = false;
      setOpen(true);
    });
  }
  if (choices) {
    var forms = choices.querySelectorAll("form");
    for (var i = 0; i < forms.length; i++) forms[i].addEventListener("submit", submit);
  }

  // Keys pressed inside the frame never reach the embedding page: ask it to close.
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape") tell({ type: "close" });
  });
  tell({ type: "ready" });
})();
