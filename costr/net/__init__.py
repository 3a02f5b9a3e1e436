"""General-purpose network machinery the proxy is built on, kept apart from the proxy's own
subject (tokens, providers, usage): the pooled HTTP/1.1 client (``http1``, with one connection
and the answer it reads in ``http1_connection``) and the bounded content decoder
(``decoding``). Nothing here imports an app."""
