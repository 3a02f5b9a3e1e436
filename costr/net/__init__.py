"""General-purpose network machinery the proxy is built on, kept apart from the proxy's own
subject (tokens, providers, usage): the pooled HTTP/1.1 client (``http1``) and the bounded
content decoder (``decoding``). Nothing here imports an app."""
