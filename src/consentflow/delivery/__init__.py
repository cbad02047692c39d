"""Webhook delivery: signing, the SSRF guard, the retry schedule, the sender."""
