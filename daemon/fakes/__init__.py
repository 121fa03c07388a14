"""Fake external parties that speak the real protocols over real sockets.

Tests and ``paymentd demo`` run these instead of UISP CRM (``uisp_server``) and LabsMobile
(``sms_sink``). Each exposes ``async def serve(fake, host, port, *, task_status)`` that
reports its base URL through ``task_status.started``.
"""
