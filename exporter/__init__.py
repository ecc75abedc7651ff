"""The DS01 metrics exporter: per-device and per-container GPU activity, clocks and deadlines."""
