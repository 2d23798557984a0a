"""What execq shows of itself: Prometheus metrics and structured logs."""
