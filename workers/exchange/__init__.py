"""The exchange edge: ccxt clients (``gateway``), their HTTP seam (``transport``),
order and position calls with each exchange's quirks, and the shared rate limit."""
