"""Test harness: real dockerd, Prometheus and Alertmanager, started and stopped by fixtures."""
