"""Fake external parties that speak the real protocols over real sockets.

Tests and ``paymentd demo`` run these instead of UISP CRM (``uisp_server``), LabsMobile
(``sms_sink``), Twilio (``twilio_server``), a Stripe front for localstripe
(``stripe_front``) and a webhook receiver (``webhook_receiver``). The HTTP fakes expose
``async def serve(fake, host, port, *, task_status)`` that reports their base URL through
``task_status.started`` (``serving.serve_app``).
"""
