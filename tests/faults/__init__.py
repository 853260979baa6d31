"""Fault injection: kill -9, killed sessions, lost servers, ambiguous commits."""
