"""The outbox: events written in the transaction of what they announce, and their delivery.

- ``events``: the event rows (pure builders) every unit of work appends to the outbox.
- ``subscriptions``: webhooks, Redis streams and in-process callbacks (units of work).
- ``dispatch``: the Dispatcher, which claims due deliveries, hands them to their sinks and
  settles them (at least once, in order per account).
- ``sinks``: where a delivery goes (HTTP POST, Redis XADD, a callback); ``signatures``:
  how an HTTP delivery is signed.

The SQL is db/outbox.py.
"""
