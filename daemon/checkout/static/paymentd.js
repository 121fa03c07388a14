/*
 * paymentd.js: the embeddable checkout, served by the daemon at /paymentd.js.
 *
 *   <script src="https://pay.example.net/paymentd.js"></script>
 *   new Paymentd({
 *     publishableKey: "pk_…",          // lists this page's origin
 *     paymentId: "pay_…",              // made by your server with its secret API key
 *     onSuccess: function (payment) {}, // paid (or authorized, for a manual capture)
 *     onFailure: function (payment) {}, // declined, cancelled, expired; or {error} when
 *                                       // the checkout could not be opened
 *     onClose: function () {}           // the customer closed it before an outcome
 *   }).open();
 *
 * A modal dialog holds the daemon's checkout page in an iframe. The outcome comes back
 * by postMessage; a message counts only if its origin is the daemon's (the origin this
 * script was loaded from) and its source is this modal's iframe. The page posts only to
 * the origin its signed link was made for. No polling: the page waits on one SSE stream.
 */
(function (global) {
  "use strict";
  var script = document.currentScript;
  var DAEMON = script && script.src ? new URL(script.src).origin : "";
  var FOCUSABLE = 'button, [href], iframe, input, select, textarea, [tabindex]:not([tabindex="-1"])';

  function Paymentd(options) {
    if (!(this instanceof Paymentd)) return new Paymentd(options);
    options = options || {};
    this.publishableKey = options.publishableKey;
    this.paymentId = options.paymentId;
    this.onSuccess = options.onSuccess || function () {};
    this.onFailure = options.onFailure || function () {};
    this.onClose = options.onClose || function () {};
    this.origin = options.daemonOrigin ? new URL(options.daemonOrigin).origin : DAEMON;
    this._modal = null;
  }

  Paymentd.prototype.open = function () {
    var self = this;
    if (self._modal) return Promise.resolve();
    if (!self.origin) return Promise.reject(new Error("paymentd.js: unknown daemon origin"));
    self._build();
    return fetch(self.origin + "/checkout-links", {
      method: "POST",
      mode: "cors",
      credentials: "omit",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ publishable_key: self.publishableKey, payment_id: self.paymentId })
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw new Error(body.detail || "checkout link refused");
        if (!self._modal) return; // closed meanwhile
        self._iframe.src = self.origin + body.path;
      });
    }).catch(function (err) {
      self._close();
      self.onFailure({ error: String(err && err.message ? err.message : err) });
    });
  };

  Paymentd.prototype.close = function () {
    if (!this._modal) return;
    this._close();
    this.onClose();
  };

  Paymentd.prototype._build = function () {
    var self = this;
    self._returnFocus = document.activeElement;
    self._overflow = document.body.style.overflow;
    document.body.style.overflow = "hidden"; // the page behind stays put

    var modal = document.createElement("div");
    modal.setAttribute("data-test-id", "paymentd-modal");
    modal.setAttribute("role", "dialog");
    modal.setAttribute("aria-modal", "true");
    modal.setAttribute("aria-label", "Payment");
    modal.style.cssText =
      "position:fixed;inset:0;z-index:2147483647;display:flex;align-items:center;" +
      "justify-content:center;background:rgba(15,20,25,.6)";

    var box = document.createElement("div");
    box.style.cssText =
      "position:relative;width:min(28rem,100vw);height:min(32rem,100vh);background:#fff;" +
      "border-radius:.5rem;box-shadow:0 .5rem 2rem rgba(0,0,0,.35);overflow:hidden";

    var close = document.createElement("button");
    close.type = "button";
    close.setAttribute("data-test-id", "paymentd-close");
    close.setAttribute("aria-label", "Close payment");
    close.textContent = "\u00d7";
    close.style.cssText =
      "position:absolute;top:.25rem;right:.25rem;z-index:1;width:2.25rem;height:2.25rem;" +
      "font-size:1.5rem;line-height:1;border:0;border-radius:50%;background:#eee;cursor:pointer";
    close.addEventListener("click", function () { self.close(); });

    var iframe = document.createElement("iframe");
    iframe.setAttribute("data-test-id", "paymentd-iframe");
    iframe.setAttribute("title", "Payment");
    iframe.setAttribute("allow", "payment");
    iframe.style.cssText = "border:0;width:100%;height:100%";

    box.appendChild(close);
    box.appendChild(iframe);
    modal.appendChild(box);
    document.body.appendChild(modal);
    self._modal = modal;
    self._iframe = iframe;

    self._onMessage = function (event) {
      // Only the daemon's page in this modal's own frame may speak to us.
      if (event.origin !== self.origin || event.source !== iframe.contentWindow) return;
      var data = event.data;
      if (!data || data.source !== "paymentd") return;
      if (data.type === "close") {
        self.close();
      } else if (data.type === "result" && data.payment && data.payment.id === self.paymentId) {
        self._close();
        if (data.outcome === "success") self.onSuccess(data.payment);
        else self.onFailure(data.payment);
      }
    };
    self._onKey = function (event) {
      if (event.key === "Escape") {
        event.preventDefault();
        self.close();
      } else if (event.key === "Tab") {
        // Keep focus inside the dialog: cycle between its focusable parts.
        var parts = modal.querySelectorAll(FOCUSABLE);
        if (!parts.length) return;
        var first = parts[0], last = parts[parts.length - 1];
        if (event.shiftKey && document.activeElement === first) {
          event.preventDefault();
          last.focus();
        } else if (!event.shiftKey && document.activeElement === last) {
          event.preventDefault();
          first.focus();
        } else if (!modal.contains(document.activeElement)) {
          event.preventDefault();
          first.focus();
        }
      }
    };
    window.addEventListener("message", self._onMessage);
    document.addEventListener("keydown", self._onKey, true);
    close.focus();
  };

  Paymentd.prototype._close = function () {
    if (!this._modal) return;
    window.removeEventListener("message", this._onMessage);
    document.removeEventListener("keydown", this._onKey, true);
    this._modal.parentNode.removeChild(this._modal);
    this._modal = null;
    this._iframe = null;
    document.body.style.overflow = this._overflow;
    if (this._returnFocus && this._returnFocus.focus) this._returnFocus.focus();
  };

  global.Paymentd = Paymentd;
})(window);
