// The customer's payment page: shows the bar's payment methods and keeps the
// M-Pesa option in step with the relay's live events, without a reload.
//
// followPaymentOptions below is the snippet docs/relay.md gives to the
// customer app, word for word (tests/test_docs.py checks that): the page is
// its first user. It never trusts an event's payload for what to show: every
// event for this bar, every reset and every (re)connect of the stream re-reads
// /bars/{id}/payment-options. So a change made while the stream was down is
// shown as soon as it is back, and what is shown is always what the
// database's payment_options view says.
"use strict";

// Follow one bar's payment options live. relay: the relay's base URL, such
// as "https://relay.example.com" ("" when the page is served by the relay
// itself); the relay must allow the page's origin (--allow-origin).
// handlers.onOptions(options) gets the body of /bars/{id}/payment-options
// whenever it may have changed, handlers.onError(message) a failed read, and
// handlers.onLive(true | false) whether the stream is up.
function followPaymentOptions(relay, barId, handlers) {
  const optionsUrl = relay + "/bars/" + encodeURIComponent(barId) + "/payment-options";
  const eventsUrl = relay + "/events?bar_id=" + encodeURIComponent(barId);
  let reading = null; // at most one read in flight, and one more queued after it
  let again = false;
  let retryDelay = 1000;

  async function refresh() {
    if (reading) {
      again = true;
      return reading;
    }
    reading = (async () => {
      do {
        again = false;
        try {
          const response = await fetch(optionsUrl, { cache: "no-store" });
          const body = await response.json();
          if (response.ok) {
            handlers.onOptions(body);
          } else {
            handlers.onError(body.error || "could not load the payment methods");
          }
        } catch (err) {
          handlers.onError("could not load the payment methods; retrying…");
        }
      } while (again);
      reading = null;
    })();
    return reading;
  }

  function connect() {
    const events = new EventSource(eventsUrl);
    events.onopen = function () {
      retryDelay = 1000;
      handlers.onLive(true);
      refresh(); // changes made while we were away
    };
    events.onmessage = function () {
      refresh(); // this bar changed
    };
    events.addEventListener("reset", function () {
      refresh(); // the relay could not replay what we missed: re-read, then go on live
    });
    events.onerror = function () {
      handlers.onLive(false);
      // A dropped stream is reopened by the browser itself, with Last-Event-ID.
      // A refused one (503 at the relay's cap, say) is closed for good: retry.
      if (events.readyState === EventSource.CLOSED) {
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
      }
    };
  }

  refresh();
  connect();
}

(function () {
  const script = document.currentScript;
  const relay = (script && script.dataset.relay) || "";
  const barId = new URLSearchParams(window.location.search).get("bar_id");
  const status = document.getElementById("status");
  const mpesa = document.getElementById("mpesa");
  const noMpesa = document.getElementById("no-mpesa");
  const shortcode = document.getElementById("mpesa-shortcode");
  const liveDot = document.getElementById("live-dot");
  const liveText = document.getElementById("live-text");

  function fail(message) {
    status.textContent = message;
    status.classList.add("error");
    status.hidden = false;
  }

  if (!barId) {
    fail("No bar given: open this page as /?bar_id=<the bar's id>.");
    return;
  }

  followPaymentOptions(relay, barId, {
    onOptions: function (options) {
      status.hidden = true;
      status.classList.remove("error");
      mpesa.hidden = !options.mpesa_available;
      noMpesa.hidden = options.mpesa_available;
      shortcode.textContent = options.business_shortcode || "";
      document.body.dataset.mpesaAvailable = String(options.mpesa_available);
    },
    onError: fail,
    onLive: function (live) {
      liveDot.classList.toggle("on", live);
      liveText.textContent = live ? "live" : "reconnecting…";
    },
  });
})();
