"""The one door to GitHub: the paced, allow-listed client, App credentials, permissions, labels and App setup."""
