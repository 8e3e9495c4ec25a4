"""What people read: rendered comments, the web dashboard and API, and the operator's command line."""
