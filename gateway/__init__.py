"""The public face: pass-through proxy, async intake and bulk status, on one aiohttp app."""
