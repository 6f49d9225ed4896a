"""Baselines the load bench compares the gateway with (run as separate processes)."""
