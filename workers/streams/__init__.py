"""The exchanges' WebSocket streams: one holder per account pushes fills, order
updates, positions and prices into the same lifecycle, caches and aged policy
that polling feeds (``execq streams``)."""
