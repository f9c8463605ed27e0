"""The gateway's HTTP/1.1 client: backends, their keep-alive pools and connections, and
responses. Neutral: the data plane relays through it, health probes, the webhook
notifier and model discovery use it too, and it imports none of them."""
