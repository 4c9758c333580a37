// The customer's payment page: shows the bar's payment methods and keeps the
// M-Pesa option in step with the relay's live events, without a reload.
//
// The page never trusts an event's payload for what to show: every event for
// this bar, and every (re)connect of the stream, re-reads
// /bars/{id}/payment-options. So a change made while the stream was down is
// shown as soon as it is back, and what is shown is always what the
// database's payment_options view says.
"use strict";

(function () {
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

  let reading = null;  // at most one read in flight, and one more queued after it
  let again = false;

  async function refresh() {
    if (reading) {
      again = true;
      return reading;
    }
    reading = (async () => {
      do {
        again = false;
        try {
          const response = await fetch(
            "/bars/" + encodeURIComponent(barId) + "/payment-options",
            { cache: "no-store" });
          const body = await response.json();
          if (!response.ok) {
            fail(body.error || "could not load the payment methods");
          } else {
            show(body);
          }
        } catch (err) {
          fail("could not load the payment methods; retrying…");
        }
      } while (again);
      reading = null;
    })();
    return reading;
  }

  function show(options) {
    status.hidden = true;
    status.classList.remove("error");
    mpesa.hidden = !options.mpesa_available;
    noMpesa.hidden = options.mpesa_available;
    shortcode.textContent = options.business_shortcode || "";
    document.body.dataset.mpesaAvailable = String(options.mpesa_available);
  }

  refresh();
  const events = new EventSource("/events?bar_id=" + encodeURIComponent(barId));
  events.onopen = function () {
    liveDot.classList.add("on");
    liveText.textContent = "live";
    refresh();
  };
  events.onmessage = function () {
    refresh();
  };
  events.onerror = function () {
    // EventSource reconnects by itself, sending Last-Event-ID.
    liveDot.classList.remove("on");
    liveText.textContent = "reconnecting…";
  };
})();
