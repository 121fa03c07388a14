"""The hosted checkout page, its per-payment status stream and the embeddable SDK.

``links`` signs and checks ``/checkout/<token>`` links, ``keys`` holds publishable keys,
``stream`` renders a payment for the browser and streams its status (SSE), ``routes`` is
the Quart blueprint, ``example_merchant`` the demo's merchant page that embeds the SDK.
Templates and static files (``paymentd.js``, the page's JS and CSS) ship as package data:
there is nothing to build.
"""
