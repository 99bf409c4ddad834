"""Talking to the nginx volumes: replica I/O, their health, values copied between them, the
volumes' secret, and `mkv volume` itself."""
