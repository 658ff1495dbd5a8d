"""Checks of tuning and eval JSONL files: duplicates, conflicting labels, balance, empty and over-long
cases, and eval cases contaminated by the tuning set (``splitwatch data``)."""
