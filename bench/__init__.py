"""Benchmarks of the gateway: ``python -m bench <subcommand>`` (see ``bench/__main__.py``)."""
