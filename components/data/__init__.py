"""Datasets: the seeded default-data generator and loaders for users' interaction files."""
