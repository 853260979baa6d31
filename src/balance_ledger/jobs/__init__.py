"""Scheduled jobs: the seed's nightly verify+fix and monthly rebuild, with APScheduler."""
