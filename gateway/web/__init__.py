"""The aiohttp shell: the applications, the request handlers, the listener and TLS."""
