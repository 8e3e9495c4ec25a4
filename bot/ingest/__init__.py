"""Deliveries in: the webhook, its durable writer, the consumer that dispatches them, redelivery and reconciliation."""
