"""The daemon process: start-up, health, metrics, systemd notifications, signals."""
