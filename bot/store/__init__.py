"""The SQLite database: its schema and every SQL statement Shepherd runs."""
