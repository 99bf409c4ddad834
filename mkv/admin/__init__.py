"""What serves operators: the admin port's metrics and status page."""
