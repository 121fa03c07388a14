"""Payments: the API's service layer, the state machines, the providers (Stripe, mock),
the payment processor (queue ``payments``) and the reconcile/expire jobs."""
