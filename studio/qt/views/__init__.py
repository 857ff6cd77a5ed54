"""The window's views; each listens to the Session and owns no data."""
