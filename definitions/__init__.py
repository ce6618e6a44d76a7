"""The example feature repository: card payments and fraud detection.

A new user starts here (``skewless init`` copies these files). The data behind it is created by
``skewless demo`` (see :mod:`definitions._example_data`) in a SQLite database; point the ``payments``
connection in ``skewless.yaml`` at PostgreSQL and nothing else changes.
"""
