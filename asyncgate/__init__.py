"""asyncgate's shared core: settings, routes, the message envelope, transport, store, logs, metrics.

The gateway and the consumer import from here and never from each other.
"""
